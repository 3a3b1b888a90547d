"""SIP with RTP end to end: a SIP phone (voxline.client.sip: aiosipua's UAC, aiortp's
RTP) places calls on the telephony test server with real recordings, over UDP and TCP:
the greeting and a reply heard, DTMF 0 answered with a REFER, a barge-in that stops
the agent's audio, hold and resume by re-INVITE (and an offer it cannot take refused
488 with the call going on), RTP that stops ending the call with a BYE. Bad input is
written by hand: garbage datagrams, malformed INVITEs (400), an SDP with no codec in
common (488), an unknown profile (404); each is counted and the server goes on. On a
server of its own: a digest account for tenant t1 (401 challenge, 403 for a wrong
password or an address outside `allow`) and a call limit of one (486/503 with
Retry-After)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import yaml

from tests.conftest import DATA, ROOT, ended_records, manifest, metric, record_of, run
from voxline.audio.convert import InboundAudio
from voxline.audio.formats import CallAudioFormat, Encoding
from voxline.client.gateway import CallOptions, load_recording
from voxline.client.sip import SipClient
from voxline.wer import wer

JFK = DATA / "read_misc" / "jfk.flac"
JFK_REF = manifest("read_misc")["jfk.flac"]["transcript"]
READ = DATA / "read_misc" / "psx_librivox_sense_and_sensibility_01_austen_64kb-0880.wav"
GREETING = ("Thanks for calling Acme Store. I can check on your order. "
            "What is your order number?")
SILENCE = b"\x00" * 320  # 20 ms of 8 kHz PCM16


def address(server) -> str:
    return f"127.0.0.1:{server.ports['sip']}"


def phone(server, opts: CallOptions | None = None, **kwargs) -> SipClient:
    return SipClient(address(server), opts or CallOptions(profile="order_status"), **kwargs)


def heard_text(whisper, pcm16: bytes) -> str:
    return whisper.transcribe(InboundAudio(CallAudioFormat(Encoding.PCM16, 8000))(pcm16)).text


def caller_text(rec: dict) -> str:
    return " ".join(t["caller_text"] for t in rec["turns"] if t["caller_text"])


async def until(done, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def pump(client: SipClient, sending: asyncio.Event, stop: asyncio.Event) -> None:
    """Silence from the phone every 20 ms while `sending` is set (its line is open)."""
    t0, n = time.monotonic(), 0
    while not stop.is_set():
        n += 1
        if sending.is_set():
            await client.send_frame(SILENCE)
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))


# ---------------------------------------------------------------- whole calls


def test_a_whole_call_over_udp_with_a_real_recording(telephony, logs, whisper):
    """JFK at 8 kHz over RTP: the greeting is heard (and transcribes back to its text),
    the recording is answered, the phone hangs up: CALLER_HANGUP, transport sip, the
    caller's words in the record."""
    client = phone(telephony)
    result = run(client.run([load_recording(JFK, 8000)]))
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events
    greeting = bytes(result.agent_audio[0])
    assert len(greeting) > 2 * 16000  # seconds of 8 kHz PCM16
    assert wer(GREETING, heard_text(whisper, greeting)) <= 0.25
    assert len(result.agent_audio.get(1, b"")) > 8000, "no reply to the recording"
    rec = record_of(logs, client.sip_call_id)
    assert rec["transport"] == "sip" and rec["reason"] == "CALLER_HANGUP", rec
    assert rec["profile"] == "order_status"
    assert wer(JFK_REF, caller_text(rec)) <= 0.3, rec["turns"]


def test_a_call_over_tcp(telephony, logs):
    client = phone(telephony, transport="tcp")
    result = run(client.run([load_recording(READ, 8000)]))
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events
    assert len(result.agent_audio[0]) > 16000 and len(result.agent_audio.get(1, b"")) > 8000
    rec = record_of(logs, client.sip_call_id)
    assert rec["transport"] == "sip" and rec["reason"] == "CALLER_HANGUP", rec


def test_dtmf_zero_is_a_refer_to_the_transfer_target(telephony, logs):
    """RFC 4733 `0`: the transfer phrase plays, then a REFER to the profile's target
    (queue:customer-care as a SIP URI), and the record says TRANSFERRED."""
    client = phone(telephony)
    result = run(client.run(["0"]))
    assert result.ended == "TRANSFERRED", result.events
    assert "customer-care" in client.refer_to, client.refer_to
    assert len(result.agent_audio.get(1, b"")) > 16000  # the transfer phrase, heard
    rec = record_of(logs, client.sip_call_id)
    assert rec["reason"] == "TRANSFERRED" and rec["transport"] == "sip", rec


class _Timed(SipClient):
    """Notes when agent audio arrives (on the clock of `spoken`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[float] = []

    def heard(self, pcm16: bytes) -> None:
        self.arrivals.append(time.perf_counter())
        super().heard(pcm16)


def test_barge_in_stops_the_agents_audio(telephony, logs, synth):
    """The caller speaks over the reply: after a short settle no more of its audio
    arrives while the caller talks, and the record marks the turn interrupted."""
    question = load_recording(synth("Hi, where is my order? The number is 1 2 3 4 5."), 8000)
    interruption = load_recording(synth(
        "Sorry, wait a moment please, I actually have a completely different question "
        "about my account and the invoice."), 8000)
    client = _Timed(address(telephony), CallOptions(profile="order_status",
                                                     barge_in_after_ms=300))
    result = run(client.run([question, interruption]))
    assert result.error is None, result.events
    (_, q_end), (b_start, b_end) = client.spoken
    assert b_end - b_start > 3.5
    before = [t for t in client.arrivals if q_end < t < b_start]
    assert before, "the reply had not started when the caller spoke"
    settle = 2.0  # speech detection and the last frames in flight, on a busy machine
    late = [round(t - b_start, 2) for t in client.arrivals if b_start + settle < t < b_end]
    assert late == [], f"agent audio {late} s into the caller's interruption"
    rec = record_of(logs, client.sip_call_id)
    reply = next(t for t in rec["turns"] if t["turn_id"] == 1)
    assert reply["interrupted"], rec["turns"]


def test_hold_and_resume_by_reinvite(telephony, logs):
    """A re-INVITE `inactive` is answered inactive and holds the agent's audio; held past
    the idle timeout, the call stays (the line is silent, not gone); `sendrecv` resumes
    it; an offer with no codec in common is refused 488 and the call goes on."""
    async def scenario() -> SipClient:
        client = phone(telephony, CallOptions(profile="order_status", reply_timeout_s=20))
        await client.connect()
        sending, stop = asyncio.Event(), asyncio.Event()
        sending.set()
        pumping = asyncio.create_task(pump(client, sending, stop))
        try:
            await until(lambda: 0 in client.result.agent_audio, 20, "the greeting")
            response = await client.reinvite("inactive")
            assert response.status_code == 200 and client.answer.audio.direction == "inactive"
            sending.clear()
            await asyncio.sleep(0.5)  # what was on the wire when the hold came
            held_at = len(client.result.agent_audio[0])
            await asyncio.sleep(5.0)  # beyond the server's idle timeout (4 s)
            assert len(client.result.agent_audio[0]) == held_at, "audio sent while held"
            assert not client.is_closed
            response = await client.reinvite("sendrecv")
            assert response.status_code == 200 and client.answer.audio.direction == "sendrecv"
            sending.set()
            refused = await client.reinvite("sendrecv", codecs=(18,))
            assert refused.status_code == 488, refused.status_code
            await asyncio.sleep(1.0)
            assert not client.is_closed
            await client.hang_up()
        finally:
            stop.set()
            await pumping
            await client.close()
        return client

    client = run(scenario())
    rec = record_of(logs, client.sip_call_id)
    assert rec["reason"] == "CALLER_HANGUP", rec


def test_rtp_that_stops_ends_the_call_with_a_bye(telephony, logs):
    async def scenario() -> SipClient:
        client = phone(telephony)
        await client.connect()
        try:
            await until(lambda: client.is_closed, 20, "the server's BYE")
        finally:
            await client.close()
        return client

    client = run(scenario())
    assert client.result.ended == "AGENT_HANGUP" and client.bye is not None
    assert record_of(logs, client.sip_call_id)["reason"] == "IDLE_TIMEOUT"


# ---------------------------------------------------------------- bad input


def _raw(port: int, data: bytes, timeout_s: float = 1.5) -> bytes | None:
    """Send one datagram; the first answer (None: none came)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.bind(("127.0.0.1", 0))
        s.sendto(data.replace(b"LPORT", str(s.getsockname()[1]).encode()), ("127.0.0.1", port))
        try:
            return s.recvfrom(65536)[0]
        except TimeoutError:
            return None


def _invite(headers: str, body: str = "") -> bytes:
    return (f"INVITE sip:order_status@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:LPORT;branch=z9hG4bK-{time.monotonic_ns()}\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def test_bad_input_is_answered_or_dropped_and_counted(telephony):
    port, url = telephony.ports["sip"], telephony.metrics_url
    invalid = metric(url, "voxline_calls_rejected_total", reason="invalid", transport="sip")
    # Not SIP at all: nothing can be answered (no Via to route it), it is dropped.
    assert _raw(port, b"hello, is anybody there?\r\n\r\n") is None
    assert _raw(port, bytes(range(256)) * 4) is None
    # An INVITE without Call-ID and CSeq, and one whose CSeq is nonsense: 400.
    base = "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:order_status@127.0.0.1>\r\n"
    for headers in (base, base + "Call-ID: bad-cseq@test\r\nCSeq: many INVITE\r\n"):
        answer = _raw(port, _invite(headers))
        assert answer is not None and answer.startswith(b"SIP/2.0 400"), answer
    # OPTIONS (a PBX's keep-alive): 200.
    options = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:LPORT;branch="
               b"z9hG4bK-opt\r\nFrom: <sip:x@127.0.0.1>;tag=2\r\nTo: <sip:127.0.0.1>\r\n"
               b"Call-ID: options@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    assert (_raw(port, options) or b"").startswith(b"SIP/2.0 200")
    # Garbage over TCP too; the connection may be dropped, the server goes on.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01garbage\r\n\r\n" + b"X" * 70000)
    # An SDP offering only G.729 (PT 18): 488; an unknown profile in the URI: 404.
    g729 = run(phone(telephony, codecs=(18,)).run([]))
    assert g729.error is not None and g729.error[1].startswith("488"), g729.error
    unknown = phone(telephony, CallOptions(profile="no_such_profile"))
    result = run(unknown.run([]))
    assert result.error is not None and result.error[1].startswith("404"), result.error
    assert unknown.rejection is not None
    assert "no_such_profile" in (unknown.rejection.get_header("warning") or "")
    assert metric(url, "voxline_calls_rejected_total", reason="invalid",
                  transport="sip") >= invalid + 4
    # and calls still go through
    after = run(phone(telephony, CallOptions(profile="order_status", reply_timeout_s=30))
                .run([]))
    assert after.error is None and len(after.agent_audio.get(0, b"")) > 16000


# ---------------------------------------------------------------- accounts and limits

PASSWORD = "sip-test-password-7f3a"
T1_KEY = "t1-sip-test-key-0c5d9e21"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, logs):
    """A server of its own: one call at a time, and SIP INVITEs only from user alice
    (digest) at 127.0.0.1, counted against tenant t1."""
    from voxline.client.local_server import server_process

    folder = tmp_path_factory.mktemp("sip_guarded")
    (folder / "t1.key").write_text(T1_KEY + "\n")
    (folder / "alice.pass").write_text(PASSWORD + "\n")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "profiles_dir": str(ROOT / "profiles"),
        "server": {"metrics_port": 0},
        "limits": {"idle_timeout_s": 6, "max_concurrent_calls": 1, "retry_after_s": 3},
        "records": {"path": str(folder / "calls.db")},
        "auth": {"tenants": [{"name": "t1", "api_key_file": "t1.key",
                              "profiles": ["order_status"]}]},
        "telephony": {"sip": {"port": 0, "tcp": False, "accounts": [
            {"tenant": "t1", "username": "alice", "password_file": str(folder / "alice.pass"),
             "allow": ["127.0.0.1/32"]}]}},
    }))
    with server_process(config, logs / "server_sip_guarded.log") as server:
        server.records = folder / "calls.db"
        yield server


def test_digest_and_allowlist_name_the_tenant_and_refuse_the_rest(guarded):

    def call(**kwargs) -> tuple[SipClient, object]:
        client = phone(guarded, CallOptions(profile="order_status", reply_timeout_s=30),
                       **kwargs)
        return client, run(client.run([]))

    _, nobody = call()
    assert nobody.error is not None and nobody.error[1].startswith("401"), nobody.error
    _, wrong = call(username="alice", password="not-the-password")
    assert wrong.error is not None and wrong.error[1].startswith("403"), wrong.error
    _, outside = call(username="alice", password=PASSWORD, local_host="127.0.0.2")
    assert outside.error is not None and outside.error[1].startswith("403"), outside.error
    client, alice = call(username="alice", password=PASSWORD)
    assert alice.error is None and len(alice.agent_audio.get(0, b"")) > 16000, alice.error
    rec = record_of(None, client.sip_call_id,
                    records=lambda _: ended_records(guarded.records))
    assert rec["tenant"] == "t1" and rec["transport"] == "sip", rec


def test_a_call_over_the_limit_is_busy_with_retry_after(guarded):
    async def scenario() -> tuple[SipClient, SipClient]:
        first = phone(guarded, username="alice", password=PASSWORD)
        await first.connect()
        try:
            second = phone(guarded, username="alice", password=PASSWORD)
            result = await second.run([])
        finally:
            await first.hang_up()
            await first.close()
        assert result.error is not None, "a second call was answered"
        return first, second

    before = metric(guarded.metrics_url, "voxline_calls_rejected_total", reason="server_limit",
                    transport="sip")
    _, second = run(scenario())
    assert second.rejection is not None
    assert second.rejection.status_code in (486, 503), second.rejection.status_code
    assert second.rejection.get_header("retry-after") == "3"
    assert metric(guarded.metrics_url, "voxline_calls_rejected_total", reason="server_limit",
                  transport="sip") == before + 1
