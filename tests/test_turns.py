"""Semantic end of turn: Smart Turn v3.2 on real speech, the endpointer's use of its
verdicts, the listener running it through the batch runner, and bench_turns.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import DATA, ROOT
from voxline.client.gateway import load_recording
from voxline.config import TurnSection
from voxline.engines.repository import ModelRepository
from voxline.scheduling.batch import BatchRunner
from voxline.scheduling.stt import STTScheduler
from voxline.scheduling.vad import VADScheduler
from voxline.session.listener import Listener
from voxline.session.turns import Endpointer, PauseCheck, TurnEnded

JFK = DATA / "read_misc" / "jfk.flac"


@pytest.fixture(scope="module")
def models():
    repo = ModelRepository(ROOT / "models")
    return {k: repo.load(n, k).engine for k, n in
            (("vad", "silero-vad"), ("turn", "smart-turn-v3"), ("stt", "whisper-tiny-en"))}


def test_smart_turn_hears_a_finished_and_an_unfinished_sentence(models):
    jfk = load_recording(JFK, 16000)
    done, cut = models["turn"].completion_probs([jfk, jfk[:32000]])  # "And so my fellow"
    assert done > 0.5 > cut


def _run(ep: Endpointer, speech_windows: int, silence_windows: int, verdict=None):
    """Speech then silence (probabilities only); returns (event, window index) pairs."""
    out = []
    window = np.zeros(512, np.float32)
    for i in range(speech_windows + silence_windows):
        for e in ep.update(window, 0.9 if i < speech_windows else 0.0):
            out.append((e, i - speech_windows))
            if isinstance(e, PauseCheck) and verdict is not None:
                ep.set_verdict(verdict, e.pause)
    return out


def test_endpointer_waits_as_the_verdict_says():
    cfg = TurnSection(semantic_check_ms=200, semantic_incomplete_ms=2000)
    ends = {}
    for name, semantic, verdict in (("silence", False, None), ("complete", True, True),
                                    ("incomplete", True, False), ("no_answer", True, None)):
        events = _run(Endpointer(cfg, 512, 600, semantic=semantic), 20, 100, verdict)
        assert (any(isinstance(e, PauseCheck) for e, _ in events)) == semantic
        ends[name] = (next(i for e, i in events if isinstance(e, TurnEnded)) + 1) * 32
    assert ends["complete"] < 300 < ends["silence"] < 700  # 32 ms windows
    assert ends["no_answer"] == ends["silence"]  # no verdict yet: silence decides
    assert ends["incomplete"] >= 2000

    # a verdict about a pause the caller has already broken is ignored
    ep = Endpointer(cfg, 512, 600, semantic=True)
    check = next(e for e, _ in _run(ep, 20, 8) if isinstance(e, PauseCheck))
    _run(ep, 5, 0)  # the caller speaks again
    ep.set_verdict(True, check.pause)
    events = _run(ep, 0, 12)
    assert not any(isinstance(e, TurnEnded) for e, _ in events[:5])


def test_listener_ends_a_finished_turn_sooner_with_the_model(models):
    speech = load_recording(JFK, 16000)
    audio = np.concatenate([speech, np.zeros(16000 * 2, np.float32)])

    async def listen(semantic: bool) -> int:
        pool = ThreadPoolExecutor(2)
        runner = BatchRunner(models["turn"].completion_probs, pool) if semantic else None
        lst = Listener(VADScheduler(models["vad"], pool), STTScheduler(models["stt"], pool),
                       TurnSection(partial_interval_ms=0), 1000, lambda p: None,
                       turn_model=runner)
        for i in range(0, len(audio), 320):
            events = await lst.feed(audio[i:i + 320])
            for event in events:
                if isinstance(event, TurnEnded):
                    return lst.endpointer.audio_ms - event.end_ms
            # The audio as fast as it goes; a pause's verdict is waited for before the
            # next frame, as if it came at once (on a call it takes tens of ms), so the
            # end of turn does not depend on how busy the machine is.
            if any(isinstance(e, PauseCheck) for e in events):
                await lst.settled()
        raise AssertionError("no end of turn")

    silence_wait, semantic_wait = asyncio.run(listen(False)), asyncio.run(listen(True))
    # sooner by most of the 1 s silence
    assert silence_wait >= 1000 and semantic_wait < silence_wait - 200, \
        (silence_wait, semantic_wait)


def test_bench_turns_reports_cut_offs_and_delays(tmp_path):
    out = tmp_path / "turns.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_turns.py"), "--limit",
                           "6", "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["recordings"] == 6
    for key in ("natural/silence_only", "natural/semantic", "mid_pause/silence_only",
                "mid_pause/semantic"):
        assert 0 <= report[key]["cut_off_early"] <= 1 and report[key]["turns"] == 6
    # silence only cuts the inserted mid-sentence pause (700 ms > 500 ms)
    assert report["mid_pause/silence_only"]["cut_off_early"] >= 0.8
    assert report["model_ms_per_check"]["n"] > 0
