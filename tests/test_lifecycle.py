"""A server's life around its calls: draining on SIGTERM, and swapping models while
calls go on."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import DATA, ROOT, run
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import server_process
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.own_server

SHUTDOWN = "Sorry, we have to end this call now. Please call us back. Goodbye."


def _config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"profiles_dir: {ROOT / 'profiles'}\nrecords: {{enabled: false}}\n{extra}")
    return path


def _said(result, turn: int) -> str:
    return " ".join(e["text"] for e in result.of_type("agent_text")
                    if e["turn"] == turn and e["text"])


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="voxline.v1.VoiceAgent"), timeout=5)
        return reply.status


def test_sigterm_drains_calls_then_says_goodbye(tmp_path, synth, logs):
    hello = load_recording(synth("Hello there."), 16000)
    config = _config(tmp_path, "server: {drain_grace_s: 15}\n")
    with server_process(config, logs / "server_drain.log") as server:
        async def scenario():
            greeted = asyncio.Event()
            # A stays on the line past the grace period; B finishes within it.
            a = asyncio.create_task(place_call(
                server.address, [hello], CallOptions(hangup_at_end=False, stay_on_line_s=60),
                lambda e: greeted.set() if e["type"] == "server_turn" and e["turn"] == 1
                else None))
            await asyncio.wait_for(greeted.wait(), 60)
            b_accepted = asyncio.Event()
            b = asyncio.create_task(place_call(
                server.address, [hello], CallOptions(fast=True),
                lambda e: b_accepted.set() if e["type"] == "accepted" else None))
            await asyncio.wait_for(b_accepted.wait(), 60)
            assert await _health(server.address) == health_pb2.HealthCheckResponse.SERVING
            server.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            # Until the server has taken the signal (it reports itself draining).
            while (status := await _health(server.address)) == \
                    health_pb2.HealthCheckResponse.SERVING and time.monotonic() < sent + 10:
                await asyncio.sleep(0.05)
            refused = await place_call(server.address, [hello], CallOptions())
            result_b = await b
            result_a = await a
            return status, refused, result_a, result_b, time.monotonic() - sent

        status, refused, a, b, took_s = run(scenario())
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert refused.error is not None and refused.error[0] == "UNAVAILABLE"
        assert "draining" in refused.error[1]
        assert b.error is None and b.ended == "CALLER_HANGUP"  # finished within the grace
        assert a.error is None and a.ended == "SERVER_SHUTDOWN"
        last = max(a.agent_audio)
        assert _said(a, last) == SHUTDOWN and len(a.agent_audio[last]) > 16000  # > 0.5 s
        assert 15 <= took_s < 50
        assert server.proc.wait(30) == 0


def test_model_swap_during_a_call(tmp_path, synth, logs):
    """A call in progress keeps its voice while a reload swaps it; the next call gets
    the new one (slower speech: length_scale 1.0 -> 1.6); the old one is released when
    the first call ends."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    manifest = models / "piper-joe" / "manifest.yaml"
    config = _config(tmp_path, f"models_dir: {models}\n")
    hello = load_recording(synth("Hello there."), 16000)
    jfk = load_recording(DATA / "read_misc" / "jfk.flac", 16000)

    def reload(address: str) -> str:
        return subprocess.run([sys.executable, "-m", "voxline.cli", "models", "reload",
                               "--server", address], capture_output=True, text=True,
                              check=True).stdout

    async def info(address: str) -> pb.ServerInfo:
        async with grpc.aio.insecure_channel(address) as channel:
            return await pb_grpc.VoiceAgentStub(channel).GetServerInfo(pb.ServerInfoRequest())

    with server_process(config, logs / "server_swap.log") as server:
        async def scenario():
            answered = asyncio.Event()
            first = asyncio.create_task(place_call(
                server.address, [hello, jfk, hello], CallOptions(end_of_turn_ms=1500),
                lambda e: answered.set() if e["type"] == "server_turn" and e["turn"] == 1
                else None))
            await asyncio.wait_for(answered.wait(), 60)
            manifest.write_text(manifest.read_text().replace("length_scale: 1.0",
                                                             "length_scale: 1.6"))
            out = await asyncio.to_thread(reload, server.address)
            during = await info(server.address)
            second = await place_call(server.address, [hello], CallOptions(fast=True))
            return out, during, second, await first

        out, during, second, first = run(scenario())
        assert "model generation 2: piper-joe; 1 calls still on the previous models" in out
        voices = [m.instance_id for m in during.models if m.name == "piper-joe"]
        assert len(voices) == 2  # old and new, while the first call goes on
        old = first.of_type("accepted")[0]["models"]["tts"]
        new = second.of_type("accepted")[0]["models"]["tts"]
        assert old != new and {old, new} == {f"piper-joe@{v}" for v in voices}
        assert first.error is None and first.ended == "CALLER_HANGUP"
        assert all(t.get("server") for t in first.turns), first.turns  # all answered
        # Same greeting text: the new voice speaks it 1.6x slower. Piper's duration noise
        # and its unscaled pauses move the ratio (1.39 seen in CI): the bound only has to
        # tell 1.6 from the old voice's 1.0.
        ratio = len(second.agent_audio[0]) / len(first.agent_audio[0])
        assert 1.25 < ratio < 1.95, ratio
        # The old voice is released once its last call has ended.
        deadline = time.time() + 10
        while time.time() < deadline:
            after = run(info(server.address))
            if len([m for m in after.models if m.name == "piper-joe"]) == 1:
                break
            time.sleep(0.2)
        assert [m.instance_id for m in after.models if m.name == "piper-joe"] == [
            new.split("@")[1]]
        assert after.model_generation == 2
        assert "nothing changed" in reload(server.address)
        assert np.isfinite(ratio)


def test_a_server_killed_mid_call_leaves_every_completed_turn_on_record(tmp_path, synth, logs):
    """`kill -9` in the middle of a call: before, the call left no record at all (records
    were written only when a call ended). Now the turns completed before the kill are on
    record, and the next server started on the host ends the call as `server_lost`."""
    from voxline.record_store import SERVER_LOST, RecordStore

    db = tmp_path / "records" / "calls.db"
    config = tmp_path / "config.yaml"
    config.write_text(f"profiles_dir: {ROOT / 'profiles'}\nrecords: {{path: {db}}}\n")
    hello = load_recording(synth("Hello there."), 16000)
    opts = CallOptions(call_id="killed-mid-call", hangup_at_end=False, stay_on_line_s=120)

    def on_record(turn: int) -> dict | None:
        if not db.is_file():
            return None
        rec = RecordStore(db, read_only=True).find(opts.call_id)
        return rec if rec and any(t["turn_id"] == turn for t in rec["turns"]) else None

    with server_process(config, logs / "server_killed.log") as server:
        async def scenario():
            call = asyncio.create_task(place_call(server.address, [hello], opts))
            # Until the answered turn is on record, with the call still in progress.
            deadline = time.monotonic() + 90
            while (rec := on_record(1)) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            server.proc.kill()  # SIGKILL: no drain, no goodbye, no last write
            server.proc.wait()
            await asyncio.gather(call, return_exceptions=True)
            return rec

        in_progress = run(scenario())
    assert in_progress is not None, "turn 1 never reached the record while the call ran"
    assert in_progress["reason"] == ""
    with server_process(config, logs / "server_after_kill.log"):
        rec = RecordStore(db, read_only=True).find(opts.call_id)
    assert rec["reason"] == SERVER_LOST, rec["reason"]
    turns = {t["turn_id"]: t for t in rec["turns"]}
    assert turns[0]["agent_text"] and turns[1]["agent_text"]  # greeting and the answer
    # The caller's words are on record (not checked word for word: CI once heard "Hello
    # there." as "Below there.", which the router then did not take as a greeting).
    assert turns[1]["caller_text"]
    assert rec["ended_at"] >= in_progress["ended_at"] and rec["duration_s"] > 0
