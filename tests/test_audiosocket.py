"""Asterisk AudioSocket end to end: Asterisk's side of the TCP protocol, written from the
published frame format (voxline.client.audiosocket), places calls on the telephony test
server with real recordings: a whole call at 8 kHz beside one at 16 kHz, a barge-in (on
AudioSocket: the agent's audio stops, nothing more of that turn), DTMF 0 transferring,
hang-ups, malformed frames that end only their own call and are counted, and refusal
over the call limit on a server of its own (which tests Vonage's refusals as well)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import uuid

import pytest

from tests.conftest import DATA, ROOT, manifest, metric, record_of, run
from voxline.client.audiosocket import AudioSocketClient, frame
from voxline.client.gateway import CallOptions, load_recording
from voxline.client.vonage import VonageClient
from voxline.wer import wer

JFK = DATA / "read_misc" / "jfk.flac"
JFK_REF = manifest("read_misc")["jfk.flac"]["transcript"]
NLP = DATA / "riva_examples" / "en-US_sample.wav"  # 16 kHz
SILENCE_8K = b"\x00" * 320


def address(server) -> str:
    return f"127.0.0.1:{server.ports['audiosocket']}"


async def raw(port: int, data: list[bytes], eof: bool = False, timeout_s: float = 20
              ) -> list[int]:
    """Send frames as they are, then read what comes back until the server closes: the
    kinds of the frames it sent (0x00 last when it hung up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    kinds: list[int] = []
    try:
        for chunk in data:
            writer.write(chunk)
        await writer.drain()
        if eof:
            writer.write_eof()
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    kind, length = struct.unpack("!BH", await reader.readexactly(3))
                    await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return kinds
                kinds.append(kind)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def uuid_frame(call_id: str) -> bytes:
    return frame(0x01, uuid.UUID(call_id).bytes)


def test_whole_calls_at_8_and_16_khz_side_by_side(telephony, logs):
    """JFK at 8 kHz (0x10) and another real recording at 16 kHz (0x12) at the same time:
    each is heard and answered in its own rate, and hangs up CALLER_HANGUP."""
    # A reply is over after 3 s of quiet: on a busy machine a "one moment" filler can
    # come a second or two before the answer itself.
    narrow = AudioSocketClient(address(telephony), CallOptions(), reply_quiet_ms=3000)
    wide = AudioSocketClient(address(telephony), CallOptions(), reply_quiet_ms=3000,
                             rate=16000)

    async def both():
        return await asyncio.gather(narrow.run([load_recording(JFK, 8000)]),
                                    wide.run([load_recording(NLP, 16000)]))

    a, b = run(both())
    for client, result, size in ((narrow, a, 320), (wide, b, 640)):
        assert result.error is None and result.ended == "CALLER_HANGUP", result.events
        assert result.agent_audio.get(0) and result.agent_audio.get(1), result.agent_audio.keys()
        # the agent's audio came back paced in 20 ms frames of the call's own kind
        sizes = [n for _, n in client.arrivals]
        assert set(sizes) == {size}, set(sizes)
        rec = record_of(logs, client.uuid)
        assert rec["transport"] == "audiosocket" and rec["reason"] == "CALLER_HANGUP", rec
    heard = " ".join(t["caller_text"] for t in record_of(logs, narrow.uuid)["turns"])
    assert wer(JFK_REF, heard) <= 0.25, heard
    heard_wide = " ".join(t["caller_text"] for t in record_of(logs, wide.uuid)["turns"])
    assert wer("what is natural language processing", heard_wide) <= 0.25, heard_wide


def test_barge_in_stops_the_agent_audio(telephony, logs, synth):
    """The caller speaks over the agent's answer: its audio stops within a moment and
    nothing more of that turn comes while the caller talks (AudioSocket has no clear
    message: stopping is the barge-in)."""
    question = load_recording(synth("Where is my order 1 2 3 4 5?"), 8000)
    interruption = load_recording(
        synth("Sorry, wait a moment, I have another question about a different order "
              "that I placed last week."), 8000)
    client = AudioSocketClient(address(telephony), CallOptions(barge_in_after_ms=300))
    result = run(client.run([question, interruption]))
    assert result.error is None, result.events
    (_, asked), (barge, said) = client.spoken
    assert said - barge > 3.0  # room to tell audio that stopped from audio that went on
    turn1 = [t for t, _ in client.arrivals if asked < t < barge]
    assert turn1, "the agent had begun to answer before the caller spoke over it"
    settle = 2.0  # speech detection, the pacer's last frame, a busy machine (CI: 2 at once)
    during = [round(t - barge, 2) for t, _ in client.arrivals if barge + settle < t < said]
    assert during == [], f"agent audio at {during} s into the caller's interruption"
    rec = record_of(logs, client.uuid)
    interrupted = {t["turn_id"]: t["interrupted"] for t in rec["turns"]}
    assert interrupted[1], rec["turns"]


def test_dtmf_zero_transfers_and_hangs_up_the_socket(telephony, logs):
    client = AudioSocketClient(address(telephony), CallOptions(stay_on_line_s=20))
    result = run(client.run(["0"]))
    # Voxline said the transfer phrase, then hung up (0x00): the dialplan goes on.
    assert result.ended == "CLOSED", result.events
    assert result.agent_audio.get(1), "the transfer phrase was played"
    rec = record_of(logs, client.uuid)
    assert rec["reason"] == "TRANSFERRED" and rec["transport"] == "audiosocket", rec


def test_hang_ups_by_frame_and_by_closing(telephony, logs):
    """0x00 from Asterisk, or the socket simply closing, both end CALLER_HANGUP."""
    by_frame, by_close = str(uuid.uuid4()), str(uuid.uuid4())
    port = telephony.ports["audiosocket"]

    async def calls():
        await asyncio.gather(
            raw(port, [uuid_frame(by_frame), *[frame(0x10, SILENCE_8K)] * 10, frame(0x00)]),
            raw(port, [uuid_frame(by_close), *[frame(0x10, SILENCE_8K)] * 10], eof=True))

    run(calls())
    for call_id in (by_frame, by_close):
        assert record_of(logs, call_id)["reason"] == "CALLER_HANGUP"


def test_bad_frames_end_only_their_call_and_are_counted(telephony, logs):
    """Each malformed stream ends its own call with a reason (a hang-up on the wire); the
    metrics count it; a good call at the same time goes on to the end."""
    url, port = telephony.metrics_url, telephony.ports["audiosocket"]
    failed = ("voxline_calls_failed_total", {"reason": "invalid_argument",
                                              "transport": "audiosocket"})
    refused = ("voxline_calls_rejected_total", {"reason": "invalid",
                                                "transport": "audiosocket"})
    before = metric(url, failed[0], **failed[1]), metric(url, refused[0], **refused[1])
    audio = [frame(0x10, SILENCE_8K)] * 5
    mid_call = {  # call_id -> (what breaks it, a word its record's reason says)
        str(uuid.uuid4()): (frame(0x42, b"?"), "unknown"),
        str(uuid.uuid4()): (frame(0x10, b"\x00" * 4000), "limit"),
        str(uuid.uuid4()): (frame(0x10, b"\x00" * 321), "whole"),
        str(uuid.uuid4()): (frame(0x03, b"x"), "dtmf"),
        str(uuid.uuid4()): (None, "second"),  # a second UUID
        str(uuid.uuid4()): (struct.pack("!BH", 0x10, 320) + b"\x00" * 100, "truncated"),
    }
    good = AudioSocketClient(address(telephony), CallOptions())

    async def scenario():
        bad = [raw(port, [uuid_frame(cid), *audio, brk if brk is not None else uuid_frame(cid)],
                   eof=word == "truncated")
               for cid, (brk, word) in mid_call.items()]
        before_call = [
            raw(port, audio),  # no UUID first
            raw(port, [uuid_frame(str(uuid.uuid4())), frame(0x13, b"\x00" * 960)]),  # 24 kHz
            raw(port, []),  # silent: no UUID within uuid_timeout_s
        ]
        return await asyncio.gather(good.run([load_recording(NLP, 8000)]), *bad,
                                    *before_call)

    result, *hung = run(scenario())
    assert all(kinds and kinds[-1] == 0x00 for kinds in hung), hung  # each hung up
    for cid, (_, word) in mid_call.items():
        rec = record_of(logs, cid)
        assert rec["reason"] == "invalid_argument" and word in rec["detail"].lower(), rec
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events
    assert result.agent_audio.get(1)
    assert record_of(logs, good.uuid)["reason"] == "CALLER_HANGUP"
    assert metric(url, failed[0], **failed[1]) >= before[0] + len(mid_call)
    assert metric(url, refused[0], **refused[1]) >= before[1] + 3


def test_what_a_connection_holds_before_it_is_a_call_is_bounded(telephony):
    """Before: DTMF frames before the first audio were held without a limit, a non-audio
    frame could announce 65,535 bytes (one loopback connection held 187 MiB in 0.6 s
    before it was admitted), and nothing capped such connections. Now a frame is refused
    from its header, the frames held before the first audio are bounded, and so are the
    connections waiting to become calls (`max_pending`: 16 on the test server)."""
    url, port = telephony.metrics_url, telephony.ports["audiosocket"]
    reasons = ("invalid", "pending_limit")
    before = {r: metric(url, "voxline_calls_rejected_total", reason=r,
                        transport="audiosocket") for r in reasons}

    # Each refusal comes at once: well within this, and before uuid_timeout_s (5 s) would
    # have ended the connection anyway.
    at_once_s = 4

    async def scenario():
        # A header announcing 65,535 bytes of an error frame: hung up without the payload.
        big = raw(port, [uuid_frame(str(uuid.uuid4())), struct.pack("!BH", 0xFF, 65535)],
                  timeout_s=at_once_s)
        # Key presses without end and no audio: hung up past the bound.
        keys = raw(port, [uuid_frame(str(uuid.uuid4())), *[frame(0x03, b"5")] * 1000],
                   timeout_s=at_once_s)
        hung = await asyncio.gather(big, keys)
        # Sixteen silent connections wait to become calls; the seventeenth is hung up at
        # once, the others are not.
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(16)]
        try:
            extra = await raw(port, [], timeout_s=at_once_s)
        finally:
            for _, writer in silent:
                writer.close()
        return hung, extra

    hung, extra = run(scenario())
    assert all(kinds == [0x00] for kinds in hung), hung
    assert extra == [0x00]
    after = {r: metric(url, "voxline_calls_rejected_total", reason=r,
                       transport="audiosocket") for r in reasons}
    assert after["invalid"] >= before["invalid"] + 2
    assert after["pending_limit"] == before["pending_limit"] + 1


def test_uuid_profiles_pick_the_longest_prefix():
    from voxline.config import AudioSocketSection
    from voxline.transport.audiosocket import AudioSocketCall

    section = AudioSocketSection(profile="order_status",
                                 uuid_profiles={"c0ffee": "coffee_shop", "c0ffee00": "other"})
    call = AudioSocketCall.__new__(AudioSocketCall)
    call.section = section
    for text, profile in (("c0ffee01-0000-4000-8000-000000000000", "coffee_shop"),
                          ("c0ffee00-0000-4000-8000-000000000000", "other"),
                          ("12345678-0000-4000-8000-000000000000", "order_status")):
        call.uuid = text
        assert call._profile() == profile


# ---------------------------------------------------------------- a server of one call

LIMITED_KEY = "limited-test-key-8d2e41b7a0"


@pytest.fixture(scope="module")
def limited(tmp_path_factory, logs):
    """One call at a time, a tenant with an API key, both listeners on: the refusals of
    AudioSocket and of Vonage (tests/test_vonage.py keeps to the shared server)."""
    from voxline.client.local_server import server_process

    tmp = tmp_path_factory.mktemp("limited")
    config = tmp / "config.yaml"
    config.write_text(f"""
extra_profiles_dirs: [{ROOT / 'tests' / 'profiles'}]
server: {{metrics_port: 0}}
limits: {{idle_timeout_s: 4, max_concurrent_calls: 1, retry_after_s: 2}}
auth:
  tenants:
    - {{name: acme, api_key_env: VOXLINE_TEST_KEY_LIMITED, profiles: ["*"]}}
records: {{path: {tmp / 'calls.db'}}}
telephony:
  audiosocket: {{port: 0, tenant: acme, allow: [127.0.0.0/8]}}
  vonage: {{port: 0}}
""")
    env = {"VOXLINE_TEST_KEY_LIMITED": LIMITED_KEY}
    with server_process(config, logs / "server_limited.log", env=env) as server:
        yield server


def test_over_the_limit_audiosocket_is_hung_up_at_once(limited):
    url = limited.metrics_url
    labels = {"reason": "server_limit", "transport": "audiosocket"}
    before = metric(url, "voxline_calls_rejected_total", **labels)
    holder = AudioSocketClient(address(limited), CallOptions(stay_on_line_s=30,
                                                             hangup_at_end=True))

    async def scenario():
        task = asyncio.create_task(holder.run([]))
        deadline = time.time() + 60
        while not holder.arrivals and time.time() < deadline:  # the greeting plays
            await asyncio.sleep(0.1)
        extra = str(uuid.uuid4())
        kinds = await raw(limited.ports["audiosocket"],
                          [uuid_frame(extra), *[frame(0x10, SILENCE_8K)] * 5])
        await holder.hang_up()
        await task
        return kinds

    kinds = run(scenario())
    assert kinds == [0x00], kinds  # no audio: hung up before a call began
    assert metric(url, "voxline_calls_rejected_total", **labels) == before + 1


def test_vonage_refusals_over_the_limit_and_without_a_key(limited):
    """Vonage calls are refused with a close code and reason: 1008 for a missing or
    wrong API key, 1013 over the call limit."""
    url, port = limited.metrics_url, limited.ports["vonage"]
    unauthenticated = {"reason": "unauthenticated", "transport": "vonage"}
    over = {"reason": "server_limit", "transport": "vonage"}
    before = (metric(url, "voxline_calls_rejected_total", **unauthenticated),
              metric(url, "voxline_calls_rejected_total", **over))
    addr = f"127.0.0.1:{port}"

    async def scenario():
        no_key = VonageClient(addr, CallOptions())
        wrong = VonageClient(addr, CallOptions(), api_key="not-the-key-00000000")
        for client in (no_key, wrong):
            await client.run([])
        holder = VonageClient(addr, CallOptions(stay_on_line_s=30), api_key=LIMITED_KEY)
        task = asyncio.create_task(holder.run([]))
        deadline = time.time() + 60
        while not holder.arrivals and time.time() < deadline:  # the greeting plays
            await asyncio.sleep(0.1)
        extra = VonageClient(addr, CallOptions(), api_key=LIMITED_KEY)
        await extra.run([])
        await holder.hang_up()
        await task
        return no_key, wrong, extra, holder

    no_key, wrong, extra, holder = run(scenario())
    for client in (no_key, wrong):
        assert client.result.error and client.result.error[0] == "REFUSED", client.result.events
        assert client.close_code == 1008, (client.close_code, client.close_reason)
    assert extra.result.error and extra.close_code == 1013, (extra.close_code,
                                                              extra.close_reason)
    assert "limit" in extra.close_reason
    assert holder.arrivals, "the admitted call heard its greeting"
    assert metric(url, "voxline_calls_rejected_total", **unauthenticated) == before[0] + 2
    assert metric(url, "voxline_calls_rejected_total", **over) == before[1] + 1

