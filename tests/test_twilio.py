"""Twilio Media Streams and Telnyx media streaming end to end: the platforms' side of the
WebSocket protocol, written from their published message formats
(voxline.client.twilio), places calls on the telephony test server with real
recordings: whole calls side by side, a barge-in (`clear`, and nothing more of that
turn), DTMF 0 transferring (the stream closes once the transfer phrase has played), hang-
ups, Telnyx's snake_case with L16 and frames out of order, malformed messages that end
only their own call and are counted, and, on a server of its own, X-Twilio-Signature and
a tenant's call limit."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.conftest import DATA, ROOT, ended_records, manifest, metric, record_of, run
from voxline.client.gateway import CallOptions, load_recording
from voxline.client.twilio import TwilioClient, twilio_signature
from voxline.wer import wer

JFK = DATA / "read_misc" / "jfk.flac"
JFK_REF = manifest("read_misc")["jfk.flac"]["transcript"]
READ = DATA / "read_misc" / "psx_librivox_sense_and_sensibility_01_austen_64kb-0880.wav"
GREETING = ("Thanks for calling Acme Store. I can check on your order. "
            "What is your order number?")
SILENCE = b"\x00" * 320  # 20 ms of 8 kHz PCM16


def client(server, opts: CallOptions | None = None, **kwargs) -> TwilioClient:
    return TwilioClient(f"127.0.0.1:{server.ports['twilio']}", opts or CallOptions(), **kwargs)


async def until(done, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while not done():
        assert time.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_two_whole_calls_at_the_same_time(telephony, logs):
    """JFK and a LibriVox sentence at 8 kHz, at once: each hears its greeting and a
    reply, echoes every mark once its audio has played, and hangs up CALLER_HANGUP;
    the custom parameters carried the profile and the caller's metadata."""
    # JFK's pauses may let the agent start answering before he is done: the call stays
    # on the line a moment after him, so his last words are heard before the hang-up.
    opts = CallOptions(profile="order_status", metadata={"caller": "+15550100"},
                       stay_on_line_s=5)
    first, second = client(telephony, opts), client(telephony, CallOptions())

    async def both():
        return await asyncio.gather(first.run([load_recording(JFK, 8000)]),
                                    second.run([load_recording(READ, 8000)]))

    results = run(both())
    for c, result in zip((first, second), results, strict=True):
        assert result.error is None and result.ended == "CALLER_HANGUP", result.events
        assert result.agent_audio.get(0) and result.agent_audio.get(1), \
            result.agent_audio.keys()
        turns = c.mark_turns()
        # the greeting's marks, then the reply's (its turn is later when the caller's
        # pauses made turns that were heard again as one)
        assert turns[0] == 0 and max(turns) >= 1 and turns == sorted(turns), turns
        marks = [name for event, name, _ in c.received if event == "mark"]
        assert c.echoed == marks  # each one, in order, once its audio had played
        rec = record_of(logs, c.call_id)
        assert rec["transport"] == "twilio" and rec["reason"] == "CALLER_HANGUP", rec
        assert rec["profile"] == "order_status"
    heard = " ".join(t["caller_text"] for t in record_of(logs, first.call_id)["turns"])
    assert wer(JFK_REF, heard) <= 0.25, heard
    # a mark came back once its audio had played: the greeting's last one no sooner
    # than the greeting's length after its first audio arrived
    last = [name for name in first.echoed if name.startswith("t0:")][-1]
    arrived = next(t for event, _, t in first.received if event == "media")
    assert first.echo_at[last] - arrived >= int(last.split(":")[1]) / 1000 - 0.2


def test_barge_in_clears_and_nothing_more_of_that_turn(telephony, logs, synth):
    question = load_recording(synth("Where is my order 1 2 3 4 5?"), 8000)
    interruption = load_recording(
        synth("Sorry, wait a moment, I have another question about a different order."), 8000)
    c = client(telephony, CallOptions(barge_in_after_ms=300))
    result = run(c.run([question, interruption]))
    assert result.error is None, result.events
    clears = [i for i, (event, _, _) in enumerate(c.received) if event == "clear"]
    assert clears, [event for event, _, _ in c.received]
    before = [name for event, name, _ in c.received[:clears[0]] if event == "mark"]
    cleared = int(before[-1][1:].split(":")[0])  # the turn that was playing
    assert cleared >= 1, before[-3:]
    after = c.received[clears[0] + 1:]
    # every audio after the clear is followed by the mark of a later turn
    for i, (event, _, _) in enumerate(after):
        if event == "media":
            mark = next(name for e, name, _ in after[i:] if e == "mark")
            assert int(mark[1:].split(":")[0]) > cleared, (mark, cleared)
    rec = record_of(logs, c.call_id)
    assert {t["turn_id"]: t["interrupted"] for t in rec["turns"]}[cleared], rec["turns"]


def test_dtmf_zero_transfers_after_the_phrase_has_played(telephony, logs):
    """DTMF 0: the transfer phrase, a last mark naming the target, and the stream
    closes (1000) only once that mark came back: what follows </Connect> then dials."""
    c = client(telephony, CallOptions(stay_on_line_s=30))
    result = run(c.run(["0"]))
    assert result.ended == "CLOSED" and c.close_code == 1000, (c.close_code, c.close_reason)
    assert c.close_reason.startswith("TRANSFERRED"), c.close_reason
    assert result.agent_audio.get(1), "the transfer phrase was played"
    assert c.echoed[-1] == "transfer:queue:customer-care", c.echoed[-3:]
    rec = record_of(logs, c.call_id)
    assert rec["reason"] == "TRANSFERRED" and rec["transport"] == "twilio", rec


def test_hang_up_by_stop_and_by_closing(telephony, logs):
    """`stop` and a closed socket are the caller hanging up; a connection that breaks
    without a close is the platform gone (gateway_lost)."""
    by_stop = client(telephony, CallOptions(wait_greeting=False))
    by_close = client(telephony, CallOptions(wait_greeting=False))
    vanishes = client(telephony, CallOptions(wait_greeting=False))

    async def calls():
        for c in (by_stop, by_close, vanishes):
            await c.connect()
            for _ in range(25):
                await c.send_frame(SILENCE)
        await asyncio.sleep(1)
        await by_stop.hang_up()
        assert by_close.ws is not None and vanishes.ws is not None
        await by_close.ws.close()
        vanishes.ws.transport.abort()  # no close frame: the network went
        for c in (by_stop, by_close, vanishes):
            await c.close()

    run(calls())
    assert record_of(logs, by_stop.call_id)["detail"] == "the stream stopped"
    for c in (by_stop, by_close):
        assert record_of(logs, c.call_id)["reason"] == "CALLER_HANGUP"
    gone = record_of(logs, vanishes.call_id)
    assert gone["reason"] == "gateway_lost" and "broke" in gone["detail"], gone


def test_telnyx_l16_out_of_order_is_answered(telephony, logs, whisper):
    """Telnyx's spelling, L16 at 16 kHz (big-endian both ways), every third pair of
    frames swapped: the recording is heard in order and the greeting comes back as
    speech."""
    c = client(telephony, CallOptions(stay_on_line_s=5), flavour="telnyx", codec="L16",
               rate=16000, swap_every=3)
    result = run(c.run([load_recording(JFK, 16000)]))
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events
    assert result.agent_audio.get(1)
    rec = record_of(logs, c.call_id)
    assert rec["transport"] == "twilio" and rec["reason"] == "CALLER_HANGUP"
    heard = " ".join(t["caller_text"] for t in rec["turns"])
    assert wer(JFK_REF, heard) <= 0.25, heard
    greeting = np.frombuffer(bytes(result.agent_audio[0]), "<i2").astype(np.float32) / 32768
    said = whisper.transcribe(greeting).text
    assert wer(GREETING, said) <= 0.4, said


async def _broken(server, payload: str | bytes | None, **kwargs) -> TwilioClient:
    """A call that starts, sends half a second of silence, then `payload` as it is
    (None: nothing more, the line goes quiet); until the server closes it."""
    c = client(server, CallOptions(**kwargs))
    await c.connect()
    for _ in range(25):
        await c.send_frame(SILENCE)
    if payload is not None:
        assert c.ws is not None
        await c.ws.send(payload)
    await until(lambda: c.is_closed, 30)
    await c.close()
    return c


def _media(payload: str) -> str:
    return json.dumps({"event": "media", "streamSid": "MZ1", "sequenceNumber": "99",
                       "media": {"track": "inbound", "chunk": "26", "timestamp": "520",
                                 "payload": payload}})


def test_bad_input_ends_only_that_call_and_is_counted(telephony, logs):
    """Each malformed message ends its own call with a close code and reason; the
    metrics count each; a line gone quiet ends IDLE_TIMEOUT; metadata over the bounds
    is refused (1008); a good call at the same time goes on to the end."""
    url = telephony.metrics_url
    failed = {"reason": "invalid_argument", "transport": "twilio"}
    refused = {"reason": "invalid", "transport": "twilio"}
    before = (metric(url, "voxline_calls_failed_total", **failed),
              metric(url, "voxline_calls_rejected_total", **refused))
    cases = {  # what breaks the call -> (close code, a word of the reason)
        '{"event": "bogus"}': (1008, "unknown event"),
        _media("not base64!"): (1007, "base64"),
        _media(base64.b64encode(b"\xff" * 2400).decode()): (1008, "max_frame_ms"),
        "hello there": (1007, "not a json"),
        b"\x00\x01\x02": (1003, "binary"),
        "x" * (1 << 20 | 1): (1009, "limit"),
    }
    good = client(telephony, CallOptions())

    async def scenario():
        return await asyncio.gather(
            good.run([load_recording(READ, 8000)]),
            *[_broken(telephony, payload) for payload in cases],
            _broken(telephony, None),
            _broken(telephony, None, metadata={f"k{i}": "v" for i in range(17)}))

    result, *broken = run(scenario())
    *bad, quiet, too_much = broken
    for c, (code, word) in zip(bad, cases.values(), strict=True):
        assert c.close_code == code and word in c.close_reason.lower(), \
            (code, word, c.close_code, c.close_reason)
        rec = record_of(logs, c.call_id)
        assert rec["reason"] == "invalid_argument", rec
    assert quiet.close_code == 1000 and quiet.close_reason.startswith("IDLE_TIMEOUT")
    assert record_of(logs, quiet.call_id)["reason"] == "IDLE_TIMEOUT"
    assert too_much.close_code == 1008 and "metadata" in too_much.close_reason
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events
    assert result.agent_audio.get(1)
    assert metric(url, "voxline_calls_failed_total", **failed) >= before[0] + len(cases)
    assert metric(url, "voxline_calls_rejected_total", **refused) >= before[1] + 1


def test_junk_before_start_is_refused(telephony):
    async def scenario():
        async with connect(f"ws://127.0.0.1:{telephony.ports['twilio']}/", proxy=None) as ws:
            await ws.send("junk")
            await ws.wait_closed()
            return ws.close_code, ws.close_reason

    code, reason = run(scenario())
    assert code == 1007 and "JSON" in reason, (code, reason)


def test_wire_messages_parse_both_spellings():
    from voxline.audio.formats import Encoding
    from voxline.transport import twilio_wire as tw

    twilio = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
              "start": {"streamSid": "MZ1", "callSid": "CA1", "accountSid": "AC1",
                        "tracks": ["inbound"], "customParameters": {"profile": "x", "a": 1},
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                        "channels": 1}}}
    telnyx = {"event": "start", "sequence_number": "1", "stream_id": "s1",
              "start": {"call_control_id": "v3:1", "custom_parameters": [
                  {"name": "lang", "value": "en"}],
                  "media_format": {"encoding": "L16", "sample_rate": 16000, "channels": 1}}}
    a = tw.parse_start(twilio, tw.detect(twilio))
    b = tw.parse_start(telnyx, tw.detect(telnyx))
    assert (a.dialect, a.call_id, a.audio.encoding, a.params) == \
        (tw.TWILIO, "CA1", Encoding.MULAW, {"profile": "x", "a": "1"})
    assert (b.dialect, b.call_id, b.audio.sample_rate, b.big_endian, b.params) == \
        (tw.TELNYX, "v3:1", 16000, True, {"lang": "en"})
    pcm = np.array([1, -2, 300], "<i2").tobytes()
    wire = base64.b64encode(np.array([1, -2, 300], ">i2").tobytes()).decode()
    assert tw.payload({"event": "media", "media": {"payload": wire}}, b, 200) == pcm
    out = json.loads(tw.media_message(b, pcm))
    assert base64.b64decode(out["media"]["payload"]) == np.array([1, -2, 300], ">i2").tobytes()
    assert "streamSid" not in out and json.loads(tw.clear_message(a)) == \
        {"event": "clear", "streamSid": "MZ1"}
    with pytest.raises(tw.WireError) as bad:
        tw.parse_start({**telnyx, "start": {"media_format": {"encoding": "OPUS"}}}, tw.TELNYX)
    assert bad.value.close_code == tw.POLICY
    for chunk in ("9" * 30, "-1", "two"):
        with pytest.raises(tw.WireError):
            tw.sequence({"media": {"chunk": chunk}}, tw.TWILIO)
    url = "wss://voxline.example.com/stream"
    assert tw.signature("token", url) == twilio_signature("token", url)


# ---------------------------------------------------------------- signed streams

TOKEN = "twilio-auth-token-3f9c2a71"
PUBLIC = "wss://voxline.test"
KEY = "acme-twilio-test-key-51c0e9"


def test_who_may_open_a_stream(monkeypatch, tmp_path):
    """The upgrade request's credentials: a signature over public_url + path names its
    account's tenant, a wrong one is 403-forbidden, none is 401 with accounts; an API
    key names its tenant; the allowlist comes first."""
    import grpc
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    from voxline.config import Settings, TwilioAccount, TwilioSection
    from voxline.transport import twilio_wire as tw
    from voxline.transport.gate import ConfigError, Gate, Rejected

    monkeypatch.setenv("VOXLINE_UNIT_KEY", KEY)
    monkeypatch.setenv("VOXLINE_UNIT_TOKEN", TOKEN)
    monkeypatch.setenv("VOXLINE_UNIT_OTHER", "globex-unit-key-000000")
    gate = Gate(Settings.model_validate({"auth": {"tenants": [
        {"name": "acme", "api_key_env": "VOXLINE_UNIT_KEY", "profiles": ["*"]},
        {"name": "globex", "api_key_env": "VOXLINE_UNIT_OTHER", "profiles": ["*"]}]}}))
    signed = TwilioSection(port=0, public_url=PUBLIC + "/", allow=["127.0.0.0/8"],
                           accounts=[TwilioAccount(tenant="globex",
                                                   auth_token_env="VOXLINE_UNIT_TOKEN")])
    accounts = tw.read_accounts(gate, signed)

    def ask(section, accounts, peer="127.0.0.1", **headers):
        request = Request("/media?x=1", Headers(**headers))
        try:
            return tw.upgrade_tenant(gate, section, accounts, request, peer)
        except Rejected as exc:
            return exc.code

    good = twilio_signature(TOKEN, PUBLIC + "/media?x=1")
    assert ask(signed, accounts, **{"X-Twilio-Signature": good}) == "globex"
    assert ask(signed, accounts, **{"X-Twilio-Signature": twilio_signature(
        TOKEN, PUBLIC + "/media")}) == grpc.StatusCode.PERMISSION_DENIED
    assert ask(signed, accounts) == grpc.StatusCode.UNAUTHENTICATED
    assert ask(signed, accounts, **{"x-api-key": KEY}) == "acme"
    assert ask(signed, accounts, peer="10.1.2.3", **{"X-Twilio-Signature": good}) == \
        grpc.StatusCode.PERMISSION_DENIED
    open_line = TwilioSection(port=0, tenant="acme")
    assert ask(open_line, []) == "acme"
    assert ask(open_line, [], **{"x-api-key": "wrong-key-0000000000"}) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert ask(TwilioSection(port=0), []) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ConfigError):
        tw.read_accounts(gate, TwilioSection(accounts=[TwilioAccount(
            tenant="nobody", auth_token_file=tmp_path / "token")]))


@pytest.fixture(scope="module")
def signed(tmp_path_factory, logs):
    """A server whose Twilio streams must be signed by the account of tenant acme,
    which may hold one call at a time."""
    from voxline.client.local_server import server_process

    tmp = tmp_path_factory.mktemp("twilio_signed")
    (tmp / "token").write_text(TOKEN + "\n")
    config = tmp / "config.yaml"
    config.write_text(f"""
extra_profiles_dirs: [{ROOT / 'tests' / 'profiles'}]
server: {{metrics_port: 0}}
limits: {{idle_timeout_s: 4, retry_after_s: 3}}
auth:
  tenants:
    - {{name: acme, api_key_env: VOXLINE_TEST_TWILIO_KEY, profiles: ["*"],
        max_concurrent_calls: 1}}
records: {{path: {tmp / 'calls.db'}}}
telephony:
  twilio:
    port: 0
    public_url: {PUBLIC}
    accounts: [{{tenant: acme, auth_token_file: {tmp / 'token'}}}]
""")
    with server_process(config, logs / "server_twilio_signed.log",
                        env={"VOXLINE_TEST_TWILIO_KEY": KEY}) as server:
        server.records = tmp / "calls.db"
        yield server


def test_signature_and_the_tenant_limit(signed):

    url = signed.metrics_url
    labels = {r: {"reason": r, "transport": "twilio"}
              for r in ("forbidden", "unauthenticated", "tenant_limit")}
    before = {r: metric(url, "voxline_calls_rejected_total", **v) for r, v in labels.items()}
    path = "/media"
    holder = client(signed, CallOptions(stay_on_line_s=60), path=path, auth_token=TOKEN,
                    public_url=PUBLIC)

    async def scenario():
        wrong = await client(signed, path=path, auth_token="not-the-token",
                             public_url=PUBLIC).run([])
        unsigned = await client(signed, path=path).run([])
        task = asyncio.create_task(holder.run([]))
        await until(lambda: holder.result.agent_audio.get(0) or holder.is_closed)
        extra = client(signed, path=path, auth_token=TOKEN, public_url=PUBLIC)
        over = await extra.run([])
        await holder.hang_up()
        await task
        return wrong, unsigned, over, extra

    wrong, unsigned, over, extra = run(scenario())
    assert wrong.error and "HTTP 403" in wrong.error[1], wrong.error
    assert unsigned.error and "HTTP 401" in unsigned.error[1], unsigned.error
    assert holder.result.agent_audio.get(0), "the signed call was answered"
    assert extra.close_code == 1013, (extra.close_code, extra.close_reason)
    assert "limit" in extra.close_reason and "retry in 3 s" in extra.close_reason
    assert over.error and over.error[0] == "REFUSED"
    for reason in labels:
        assert metric(url, "voxline_calls_rejected_total", **labels[reason]) \
            == before[reason] + 1, reason
    rec = record_of(signed.records, holder.call_id,
                    records=ended_records)
    assert rec["tenant"] == "acme" and rec["reason"] == "CALLER_HANGUP", rec
