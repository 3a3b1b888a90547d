"""The quick-start demo call (`voxline demo`, what scripts/demo.sh places): real
recordings of callers ordering coffee, 8 kHz μ-law in real time, against a real server.
Checked on what must not depend on a borderline decode: routes, tools, arguments, and
that every agent turn answers its caller turn."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import soundfile as sf

from voxline.agent.profile import FallbackPhrases
from voxline.client.demo import RATE, TURNS


def test_the_demo_call(server, tmp_path):
    wav = tmp_path / "demo-call.wav"
    out = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "demo", "--server", server, "--json",
         "--call-id", "demo-test", "--out", str(wav)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e for e in events if e["type"] == "error"] == []
    ended = [e for e in events if e["type"] == "ended"]
    assert ended and ended[0]["reason"] == "AGENT_HANGUP", ended  # after the goodbye

    # One reply per caller turn, each on the route the demo promises, none a fallback.
    metrics = [e for e in events if e["type"] == "server_turn" and e["turn"]]
    assert [m["route"] for m in metrics] == [t.route for t in TURNS], metrics
    assert not any(m["interrupted"] for m in metrics)
    said = {m["turn"]: " ".join(e["text"] for e in events if e["type"] == "agent_text"
                                and e["turn"] == m["turn"] and e["text"]) for m in metrics}
    fallbacks = FallbackPhrases()
    for turn, text in said.items():
        assert text and text not in (fallbacks.not_understood, fallbacks.llm_error), turn

    tools = {e["turn"]: e for e in events if e["type"] == "tool_call"}
    for m, expected in zip(metrics, TURNS, strict=True):
        call = tools.get(m["turn"])
        if not expected.tool:
            assert call is None, call
            continue
        assert call is not None and call["name"] == expected.tool, (m["turn"], call)
        assert call["outcome"] == "ok", call
        if expected.arguments:
            assert json.loads(call["arguments"]) == expected.arguments, call
            # The agent reads the order back: every ordered item is in its reply.
            for value in expected.arguments.values():
                assert value in said[m["turn"]].lower(), (value, said[m["turn"]])

    # Both sides in one stereo file: the caller's turns left, the agent's right.
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == RATE and audio.ndim == 2 and audio.shape[1] == 2
    frame = rate // 50
    loud = [np.abs(audio[:len(audio) // frame * frame, ch]).reshape(-1, frame).max(axis=1)
            > 0.05 for ch in (0, 1)]
    caller_ms, agent_ms = (int(x.sum()) * 20 for x in loud)
    assert caller_ms > 3000 and agent_ms > 3000, (caller_ms, agent_ms)
    # A gateway plays the agent between the caller's turns, not over them.
    assert (loud[0] & loud[1]).sum() * 20 < 500
