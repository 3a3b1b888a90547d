"""What every telephony transport shares: the listeners in GetServerInfo, the transport
label in metrics and records, `voxline call --transport` over each protocol's client,
and the pure timing helpers (Reorder, Pacer). Each protocol's own behaviour is tested
in its own file (test_sip.py, test_twilio.py, test_audiosocket.py, test_vonage.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DATA, call_records, run
from voxline.transport.pacing import Pacer, Reorder
from voxline.transport.wire import allowed
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

TRANSPORTS = ("sip", "twilio", "audiosocket", "vonage")
# One sentence with no pause in it: JFK pauses longer than the end of turn, and a reply
# that begins while the caller still speaks cannot be timed from the caller's side.
QUESTION = DATA / "riva_examples" / "en-US_sample.wav"  # "what is natural language processing"


def test_reorder_puts_frames_back_in_order_and_gives_up_on_a_lost_one():
    r: Reorder[str] = Reorder(depth=2)
    assert r.push(10, "a") == ["a"]
    assert r.push(12, "c") == []  # 11 is late: hold 12
    assert r.push(11, "b") == ["b", "c"]
    assert r.push(11, "b again") == [] and r.late == 1  # its place has passed
    assert r.push(14, "e") == [] and r.push(15, "f") == []
    assert r.push(16, "g") == ["e", "f", "g"] and r.lost == 1  # 13 never came
    assert r.push(18, "i") == [] and r.flush() == ["i"]


def test_pacer_sends_whole_frames_on_the_clock_and_clear_drops_the_rest():
    sent: list[tuple[float, bytes]] = []

    async def scenario() -> None:
        async def send(frame: bytes) -> None:
            sent.append((time.perf_counter(), frame))

        pacer = Pacer(4, 0.02, send)
        pacer.start()
        start = time.perf_counter()
        pacer.push(1, b"\x01" * 4 * 10 + b"\x02\x02")  # 10 frames and a bit
        while len(sent) < 5:
            await asyncio.sleep(0.005)
        pacer.clear()  # barge-in: what is left never goes out
        await asyncio.sleep(0.1)
        await pacer.close()
        assert len(sent) <= 6
        # One frame per 20 ms, not all at once (generous bounds: a busy machine).
        assert sent[4][0] - start >= 0.075
        assert all(len(f) == 4 for _, f in sent)
        assert pacer.sent_ms[1] == pytest.approx(len(sent) * 20)

    run(scenario())
    assert allowed("10.1.2.3", ["10.0.0.0/8"]) and not allowed("192.168.0.1", ["10.0.0.0/8"])
    assert allowed("::1", []) and not allowed("not an address", ["10.0.0.0/8"])


def test_every_listener_is_in_server_info(telephony):
    async def ask() -> pb.ServerInfo:
        async with grpc.aio.insecure_channel(telephony.address) as ch:
            return await pb_grpc.VoiceAgentStub(ch).GetServerInfo(pb.ServerInfoRequest())

    info = run(ask())
    ports = {t.name: t.port for t in info.transports}
    assert ports["grpc"] == int(telephony.address.rpartition(":")[2])
    for name in TRANSPORTS:
        assert ports[name] == telephony.ports[name] and ports[name] > 0, ports


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_calls_over_each_transport(telephony, logs, transport):
    """`voxline call --transport X` finds the listener through GetServerInfo, places a
    call with a real recording, hears the agent, and hangs up; the call's record and
    metrics name the transport."""
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "call", "--server", telephony.address,
         "--transport", transport, "--json", "--timeout", "90", str(QUESTION)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    accepted = [e for e in events if e["type"] == "accepted"]
    heard = [e for e in events if e["type"] == "turn"]
    ended = [e for e in events if e["type"] == "ended"]
    assert accepted and heard and heard[0]["voice_to_voice_ms"] > 0, events
    assert ended and ended[-1]["reason"] == "CALLER_HANGUP", events

    deadline = time.time() + 30
    record = None
    while record is None and time.time() < deadline:
        record = next((r for r in call_records(logs)
                       if r["transport"] == transport and r["started_at"] >= started), None)
        time.sleep(0.2)
    assert record is not None, f"no record of the {transport} call"
    assert record["transport"] == transport and record["reason"] == "CALLER_HANGUP"
    assert len(record["turns"]) >= 2  # the greeting and the answer to the recording

    text = httpx.get(telephony.metrics_url, timeout=10).text
    completed = {tuple(sorted(s.labels.items())): s.value
                 for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "voxline_calls_completed_total"}
    assert completed[(("reason", "CALLER_HANGUP"), ("transport", transport))] >= 1


@pytest.mark.own_server
def test_a_draining_server_refuses_every_transport(tmp_path, logs):
    """SIGTERM: while a call in progress keeps the server draining, a new call on every
    telephony listener is refused the protocol's way and counted as `draining`."""
    import signal

    import yaml
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from voxline.client.gateway import CallOptions, load_recording, place_call
    from voxline.client.local_server import server_process
    from voxline.client.wire import place_wire_call

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "records": {"enabled": False}, "server": {"metrics_port": 0, "drain_grace_s": 10},
        "telephony": {name: {"port": 0} for name in TRANSPORTS}}))
    question = load_recording(QUESTION, 16000)
    with server_process(config, logs / "server_telephony_drain.log") as server:
        async def scenario():
            greeted = asyncio.Event()
            held = asyncio.create_task(place_call(
                server.address, [question], CallOptions(hangup_at_end=False, stay_on_line_s=60),
                lambda e: greeted.set() if e["type"] == "server_turn" else None))
            await asyncio.wait_for(greeted.wait(), 90)
            server.proc.send_signal(signal.SIGTERM)
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                deadline = time.monotonic() + 10
                while (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status \
                        == health_pb2.HealthCheckResponse.SERVING:
                    assert time.monotonic() < deadline, "the server did not start draining"
                    await asyncio.sleep(0.05)
            refused = {}
            # Half a second of line noise: AudioSocket says who calls (its UUID) and its
            # rate (the first audio frame) before it can be refused.
            line = np.zeros(4000, np.float32)
            for name in TRANSPORTS:
                refused[name] = await place_wire_call(
                    name, f"127.0.0.1:{server.ports[name]}", [line],
                    CallOptions(wait_greeting=False, reply_timeout_s=10, hangup_at_end=False))
            text = httpx.get(server.metrics_url, timeout=10).text
            return refused, text, await held

        refused, text, held = run(scenario())
        counts = {s.labels["transport"]: s.value
                  for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "voxline_calls_rejected_total"
                  and s.labels.get("reason") == "draining"}
        for name in TRANSPORTS:
            assert counts.get(name) == 1, (name, counts, refused[name].events)
            assert not refused[name].agent_audio, name  # nothing was answered
        assert held.ended == "SERVER_SHUTDOWN"
