"""Vonage Voice API WebSockets end to end: Vonage's side of the protocol, written from
its published messages (voxline.client.vonage), places calls on the telephony test
server with real recordings: a whole call at 16 kHz beside one at 8 kHz, a barge-in that
yields `clear` and no more audio of that turn, DTMF 0 transferring, hang-ups, and bad
input that ends only its own call with a close code and is counted. Refusal over the
call limit and without an API key runs on tests/test_audiosocket.py's limited server."""

from __future__ import annotations

import asyncio
import contextlib
import json

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import DATA, manifest, metric, record_of, run
from voxline.client.gateway import CallOptions, load_recording
from voxline.client.vonage import VonageClient
from voxline.wer import wer

JFK = DATA / "read_misc" / "jfk.flac"
JFK_REF = manifest("read_misc")["jfk.flac"]["transcript"]
NLP = DATA / "riva_examples" / "en-US_sample.wav"
SILENCE_16K = b"\x00" * 640


def address(server) -> str:
    return f"127.0.0.1:{server.ports['vonage']}"


def connected(call_id: str, rate: int = 16000, **headers: object) -> str:
    return json.dumps({"event": "websocket:connected",
                       "content-type": f"audio/l16;rate={rate}", "call_id": call_id,
                       **headers})


async def raw(port: int, messages: list[str | bytes], timeout_s: float = 20
              ) -> tuple[int | None, str]:
    """Send messages as they are, then wait for the server to close: its code and
    reason."""
    async with connect(f"ws://127.0.0.1:{port}/", compression=None, close_timeout=2) as ws:
        try:
            for message in messages:
                await ws.send(message)
            async with asyncio.timeout(timeout_s):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason


def test_whole_calls_at_16_and_8_khz_side_by_side(telephony, logs):
    """JFK at 16 kHz and another recording at 8 kHz at once, each with its NCCO headers:
    heard, answered in whole 20 ms frames of its rate, marks echoed, CALLER_HANGUP."""
    # A reply is over after 3 s of quiet: on a busy machine a "one moment" filler can
    # come a second or two before the answer itself.
    wide = VonageClient(address(telephony), CallOptions(
        profile="order_status", metadata={"caller": "+15550100", "lang": "en"}),
        reply_quiet_ms=3000)
    narrow = VonageClient(address(telephony), CallOptions(), reply_quiet_ms=3000, rate=8000)

    async def both():
        return await asyncio.gather(wide.run([load_recording(JFK, 16000)]),
                                    narrow.run([load_recording(NLP, 8000)]))

    a, b = run(both())
    for client, result, size in ((wide, a, 640), (narrow, b, 320)):
        assert result.error is None and result.ended == "CALLER_HANGUP", result.events
        assert result.agent_audio.get(0) and result.agent_audio.get(1)
        assert client.odd_frames == [] and {n for _, n in client.arrivals} == {size}
        assert client.notified, "Voxline asked to hear when its audio had played"
        rec = record_of(logs, client.call_id)
        assert rec["transport"] == "vonage" and rec["reason"] == "CALLER_HANGUP", rec
    rec = record_of(logs, wide.call_id)
    assert rec["profile"] == "order_status"
    heard = " ".join(t["caller_text"] for t in rec["turns"])
    assert wer(JFK_REF, heard) <= 0.25, heard
    heard_narrow = " ".join(t["caller_text"] for t in record_of(logs, narrow.call_id)["turns"])
    assert wer("what is natural language processing", heard_narrow) <= 0.25, heard_narrow


def test_barge_in_clears_and_no_more_of_that_turn_comes(telephony, logs, synth):
    question = load_recording(synth("Where is my order 1 2 3 4 5?"), 16000)
    interruption = load_recording(
        synth("Sorry, wait a moment, I have another question about a different order "
              "that I placed last week."), 16000)
    client = VonageClient(address(telephony), CallOptions(barge_in_after_ms=300))
    result = run(client.run([question, interruption]))
    assert result.error is None, result.events
    (_, asked), (barge, said) = client.spoken
    cleared = [t for t in client.clears if t > barge]
    assert cleared, result.events  # Voxline sent {"action": "clear"} on the barge-in
    assert [t for t, _ in client.arrivals if asked < t < barge], "it had begun to answer"
    # After the clear, nothing more of the interrupted turn: no audio at all while the
    # caller still talks (frames already on the wire as the clear left: a moment).
    late = [round(t - cleared[0], 2) for t, _ in client.arrivals
            if cleared[0] + 0.3 < t < said]
    assert late == [], f"agent audio {late} s after the clear"
    rec = record_of(logs, client.call_id)
    assert {t["turn_id"]: t["interrupted"] for t in rec["turns"]}[1], rec["turns"]


def test_dtmf_zero_transfers_and_closes_the_socket(telephony, logs):
    client = VonageClient(address(telephony), CallOptions(stay_on_line_s=20))
    result = run(client.run(["0"]))
    assert result.ended == "CLOSED", result.events
    assert client.close_code == 1000 and client.close_reason.startswith("TRANSFERRED")
    assert result.agent_audio.get(1), "the transfer phrase was played"
    assert record_of(logs, client.call_id)["reason"] == "TRANSFERRED"


def test_hang_up_and_a_socket_that_vanishes(telephony, logs):
    """A close from Vonage is the caller hanging up; a connection that drops without a
    close is the platform gone (`gateway_lost`, as a broken gRPC stream)."""
    port = telephony.ports["vonage"]

    async def call(call_id: str, vanish: bool) -> None:
        ws = await connect(f"ws://127.0.0.1:{port}/", compression=None, close_timeout=1)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(connected(call_id))
            for _ in range(10):
                await ws.send(SILENCE_16K)
                await asyncio.sleep(0.02)
            if vanish:
                ws.transport.abort()  # no close frame: the network went
            else:
                await ws.close(1000, "caller hung up")

    async def calls():
        await asyncio.gather(call("vonage-hangs-up", False), call("vonage-vanishes", True))

    run(calls())
    hung, gone = record_of(logs, "vonage-hangs-up"), record_of(logs, "vonage-vanishes")
    assert hung["reason"] == "CALLER_HANGUP" and "closed" in hung["detail"], hung
    assert gone["reason"] == "gateway_lost" and "broke" in gone["detail"], gone


def test_bad_input_ends_only_its_call_and_is_counted(telephony, logs):
    url, port = telephony.metrics_url, telephony.ports["vonage"]
    failed = {"reason": "invalid_argument", "transport": "vonage"}
    refused = {"reason": "invalid", "transport": "vonage"}
    before = (metric(url, "voxline_calls_failed_total", **failed),
              metric(url, "voxline_calls_rejected_total", **refused))
    audio = [SILENCE_16K] * 5
    mid_call = {  # call_id -> (what breaks it, its close code, a word of its reason)
        "vonage-bad-json": ("{not json", 1007, "json"),
        "vonage-bad-event": (json.dumps({"event": "websocket:surprise"}), 1007, "unknown"),
        "vonage-bad-odd": (b"\x00" * 641, 1007, "whole"),
        "vonage-bad-big": (b"\x00" * 8000, 1009, "limit"),
        "vonage-bad-dtmf": (json.dumps({"event": "websocket:dtmf", "digit": "x"}), 1007,
                            "digit"),
    }
    before_call = [  # (messages, close code, a word of its reason)
        ([SILENCE_16K], 1008, "websocket:connected"),  # audio first
        ([connected("vonage-24k", rate=24000)], 1003, "content-type"),
        ([connected("vonage-meta", **{f"k{i}": "v" for i in range(40)})], 1008, "metadata"),
        ([], 1008, "websocket:connected"),  # silent: nothing within connect_timeout_s
    ]
    good = VonageClient(address(telephony), CallOptions())

    async def scenario():
        return await asyncio.gather(
            good.run([load_recording(NLP, 16000)]),
            *[raw(port, [connected(cid), *audio, brk]) for cid, (brk, _, _) in mid_call.items()],
            *[raw(port, messages) for messages, _, _ in before_call])

    result, *closes = run(scenario())
    expected = [(code, word) for _, code, word in [*mid_call.values(), *before_call]]
    for (code, reason), (want, word) in zip(closes, expected, strict=True):
        assert code == want and word in reason.lower(), (code, reason, want, word)
    for cid, (_, _, word) in mid_call.items():
        rec = record_of(logs, cid)
        assert rec["reason"] == "invalid_argument" and word in rec["detail"].lower(), rec
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events
    assert record_of(logs, good.call_id)["reason"] == "CALLER_HANGUP"
    assert metric(url, "voxline_calls_failed_total", **failed) >= before[0] + len(mid_call)
    assert metric(url, "voxline_calls_rejected_total", **refused) >= before[1] + len(before_call)
