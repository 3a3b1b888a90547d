"""Call recording: consented calls on a profile or tenant that opts in leave a stereo WAV
beside the records (caller left as received, agent right as heard), through gRPC and
the telephony transports; nothing for the others; retention removes old files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import DATA, ended_records, record_of, run, shared_records
from voxline.audio.convert import decode, encode
from voxline.audio.formats import CallAudioFormat, Encoding
from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, GatewayCall, load_recording, place_call
from voxline.client.local_server import local_server
from voxline.client.wire import client_class
from voxline.record_store import RecordStore
from voxline.records import CallRecord, recording_path, recordings_dir
from voxline.session import recording as recording_module
from voxline.session.recording import CallRecorder
from voxline.v1 import voice_agent_pb2 as pb
from voxline.wer import wer

RATE = 16000
PCM = CallAudioFormat(Encoding.PCM16, RATE)
QUESTION = DATA / "read_misc" / "psx_librivox_sense_and_sensibility_01_austen_64kb-0880.wav"
INTERRUPTION = DATA / "read_misc" / "psx_librivox_sense_and_sensibility_01_austen_64kb-0930.wav"
SHORT = DATA / "read_misc" / "psx_cards_001.wav"  # "ten of clubs"
KEY_FREQS = (770.0, 1336.0)  # DTMF digit 5


def read_recording(logs: Path, rec: dict) -> tuple[np.ndarray, int]:
    """The call's recording as int16 (samples, 2) and its rate."""
    assert rec["recording"] == f"{rec['session_id']}.wav", rec["recording"]
    path = recording_path(logs / "config.db", rec["session_id"])
    audio, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert audio.shape[1] == 2
    assert abs(rec["recording_s"] - len(audio) / rate) < 0.01
    return audio, rate


def as_received(frames: list[np.ndarray], fmt: CallAudioFormat) -> np.ndarray:
    """The caller audio sent, as the server decodes it, in 16-bit samples."""
    sent = np.concatenate([np.zeros(0, np.float32), *frames])
    heard = decode(encode(sent, fmt.encoding), fmt.encoding)
    return np.round(heard * 32768).astype(np.int32)


def active_windows(x: np.ndarray, rate: int, level: float = 300) -> np.ndarray:
    """Which 100 ms windows of 16-bit audio are not silent."""
    win = rate // 10
    n = len(x) // win
    rms = np.sqrt(np.mean(x[:n * win].reshape(n, win).astype(np.float64) ** 2, axis=1))
    return rms > level


def segments(x: np.ndarray, rate: int, gap_s: float = 1.0) -> list[tuple[int, int]]:
    """Stretches of sound separated by at least `gap_s` of (near) silence."""
    loud = np.flatnonzero(np.abs(x) > 60)
    if not len(loud):
        return []
    cuts = np.flatnonzero(np.diff(loud) > gap_s * rate)
    starts = [loud[0], *loud[cuts + 1]]
    ends = [*loud[cuts], loud[-1]]
    return [(int(s), int(e) + 1) for s, e in zip(starts, ends, strict=True)]


def tone_power(x: np.ndarray, rate: int) -> float:
    """Energy at the key's two frequencies (a DFT at each: Goertzel's result)."""
    t = np.arange(len(x)) / rate
    x = x.astype(np.float64)
    return float(sum(abs(np.dot(x, np.exp(-2j * np.pi * f * t))) ** 2 for f in KEY_FREQS))


def opts(**kw) -> CallOptions:
    base = {"profile": "recorded", "record": True, "keep_audio": True,
            "call_id": f"rec-{time.time_ns()}"}
    return CallOptions(**{**base, **kw})


def accepted_session(result) -> str:
    return result.of_type("accepted")[0]["session_id"]


# ---------------------------------------------------------------- over gRPC, real models


def test_consented_call_records_the_caller_left_and_the_agent_right(server, logs, whisper,
                                                                    tmp_path):
    """Left: the caller's audio exactly as sent, as long as the call; right: the agent's
    audio where the caller heard it, and it says what the record says it said. `voxline
    calls --recording` lists it and `--recording-out` copies it out."""
    o = opts(stay_on_line_s=2.5)  # the answer's last second plays out before hanging up
    result = run(place_call(server, [load_recording(QUESTION, RATE)], o))
    assert result.error is None and result.ended == "CALLER_HANGUP", result.error
    assert result.frames_lost == 0
    rec = record_of(logs, o.call_id, records=shared_records)
    assert rec["session_id"] == accepted_session(result)
    audio, rate = read_recording(logs, rec)
    assert rate == RATE
    left, right = audio[:, 0].astype(np.int32), audio[:, 1].astype(np.int32)
    sent = as_received(result.caller_frames, PCM)
    assert abs(len(left) - len(sent)) <= 0.1 * RATE, (len(left), len(sent))
    assert abs(len(left) / RATE - result.audio_sent_ms / 1000) <= 0.1
    n = min(len(left), len(sent))
    assert np.corrcoef(left[:n], sent[:n])[0, 1] > 0.999
    assert np.abs(left[:n] - sent[:n]).max() <= 1

    # The agent's side: sound where the caller heard the agent (the client's own
    # picture of its playback, which runs a little later than the server's clock)...
    heard = np.round(result.stereo(PCM)[:n, 1] * 32768)
    theirs, ours = active_windows(heard, RATE), active_windows(right[:n], RATE)
    near = np.array([ours[max(0, i - 5):i + 2].any() for i in range(len(theirs))])
    assert theirs.sum() > 50 and (near[theirs]).mean() >= 0.9, (theirs.sum(), near[theirs].mean())
    assert abs(int(ours.sum()) - int(theirs.sum())) <= max(5, 0.1 * theirs.sum())
    # ...and transcribed, it says what the record says the agent said.
    said = " ".join(t["agent_text"] for t in sorted(rec["turns"], key=lambda t: t["turn_id"])
                    if t["agent_text"])
    assert "Dashwood" in said, said  # the router's long answer
    pieces = [right[s:e].astype(np.float32) / 32768 for s, e in segments(right, RATE)]
    text = " ".join(whisper.transcribe(p).text for p in pieces)
    assert wer(said, text) <= 0.35, (said, text)

    calls = [sys.executable, "-m", "voxline.cli", "calls", "--db", str(logs / "config.db")]
    listed = subprocess.run([*calls, "--recording", "--limit", "500"], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if o.call_id in x)
    assert str(recording_path(logs / "config.db", rec["session_id"])) in line
    assert f"{rec['recording_s']:.1f} s" in line
    out = tmp_path / "copy.wav"
    copied = subprocess.run([*calls, "--call", o.call_id, "--recording-out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    assert out.read_bytes() == recording_path(logs / "config.db",
                                              rec["session_id"]).read_bytes()


def test_barge_in_cuts_the_agent_side_where_the_caller_broke_in(server, logs):
    """What was sent but not yet played when the caller broke in is not in the
    recording: the agent's side stops at the clear, though more had been sent."""
    o = opts(barge_in_after_ms=300)
    turns = [load_recording(QUESTION, RATE), load_recording(INTERRUPTION, RATE)]
    result = run(place_call(server, turns, o))
    assert result.error is None
    clears = result.of_type("clear_playback")
    assert clears, [e["type"] for e in result.events]
    cut_turn = clears[0]["turn"]
    rec = record_of(logs, o.call_id, records=shared_records)
    audio, _ = read_recording(logs, rec)
    right = audio[:, 1].astype(np.int32)
    clear_at = next(at for kind, at, _ in result.playback if kind == "clear")
    # The reply to the interruption comes seconds later (its speech, end of turn, STT).
    window = right[:clear_at + int(1.5 * RATE)]
    start, cut_end = next((s, e) for s, e in segments(window, RATE) if e >= clear_at - RATE)
    # The cut is at the server's clock when it cleared, which the caller's had passed.
    assert cut_end <= clear_at + 0.02 * RATE, (cut_end, clear_at)
    assert cut_end >= clear_at - 1.0 * RATE, (cut_end, clear_at)
    sent = len(result.agent_audio[cut_turn]) // 2  # PCM16 bytes -> samples
    played = cut_end - start
    assert 0.1 * RATE < played < sent - 0.3 * RATE, (played / RATE, sent / RATE)
    assert not window[cut_end:].any()


class KeyPressCall(GatewayCall):
    """A gateway that passes a key press on in band (the tone stays in the caller's
    audio) and as a DtmfDigit, sent as the tone's last frame goes."""

    def __init__(self, channel, opts: CallOptions, tone_turn: np.ndarray, tone_end: int):
        super().__init__(channel, opts)
        self.tone_turn, self.tone_end = tone_turn, tone_end
        self._press_at: int | None = None
        self.pressed_at = 0  # caller samples sent when the DtmfDigit went

    async def _stream(self, audio: np.ndarray, paced: bool) -> None:
        if audio is self.tone_turn:
            self._press_at = self._sent + self.tone_end
        await super()._stream(audio, paced)

    def send_audio(self, samples: np.ndarray) -> None:
        super().send_audio(samples)
        if self._press_at is not None and self._sent >= self._press_at:
            self.pressed_at, self._press_at = self._sent, None
            self.send(pb.CallInput(dtmf=pb.DtmfDigit(digit="5", duration_ms=100)))


def test_a_key_press_is_silenced_on_the_caller_side_and_the_rest_kept(server, logs):
    frame = RATE // 50
    speech = load_recording(QUESTION, RATE)
    speech = np.pad(speech, (0, -len(speech) % frame))
    t = np.arange(int(0.1 * RATE)) / RATE
    tone = (0.3 * np.sin(2 * np.pi * KEY_FREQS[0] * t)
            + 0.3 * np.sin(2 * np.pi * KEY_FREQS[1] * t)).astype(np.float32)
    gap = np.zeros(int(0.4 * RATE), np.float32)
    turn = np.concatenate([speech, gap, tone, np.zeros(RATE, np.float32)])
    tone_end = len(speech) + len(gap) + len(tone)
    o = opts()

    async def call():
        async with Connection.of(server).channel() as channel:
            gateway = KeyPressCall(channel, o, turn, tone_end)
            return gateway, await gateway.run([turn])

    gateway, result = run(call())
    assert result.error is None and result.frames_lost == 0, result.error
    rec = record_of(logs, o.call_id, records=shared_records)
    audio, _ = read_recording(logs, rec)
    left = audio[:, 0].astype(np.int32)
    sent = as_received(result.caller_frames, PCM)
    pressed = gateway.pressed_at
    key = slice(pressed - len(tone) - int(0.02 * RATE), pressed + int(0.02 * RATE))
    assert tone_power(sent[key], RATE) > 1e12  # the tone went out in band...
    assert tone_power(left[key], RATE) < 1e-6 * tone_power(sent[key], RATE)  # ...not kept
    # Silenced: the key press's 100 ms and the 60 ms after it, nothing else.
    quiet = np.zeros(len(left), bool)
    quiet[pressed - int(0.1 * RATE):pressed + int(0.06 * RATE)] = True
    assert not left[quiet].any()
    n = min(len(left), len(sent))
    kept = ~quiet[:n]
    assert np.abs(left[:n][kept] - sent[:n][kept]).max() <= 1
    assert np.abs(left[:n][kept]).max() > 3000  # the caller's speech is there


def test_no_consent_or_no_opt_in_records_nothing(server, logs):
    """Record false on a recording profile, and consent on a profile that does not
    record: no file, an empty `recording`."""
    folder = recordings_dir(logs / "config.db")
    for o in (opts(record=False), opts(profile="order_status")):
        result = run(place_call(server, [], o))
        assert result.error is None and result.ended == "CALLER_HANGUP", result.error
        rec = record_of(logs, o.call_id, records=shared_records)
        assert rec["recording"] == "" and rec["recording_s"] == 0
        assert not (folder / f"{accepted_session(result)}.wav").exists()


# ---------------------------------------------------------------- the telephony transports


@pytest.mark.parametrize("transport", ["twilio", "vonage", "sip"])
def test_each_transport_carries_the_consent(telephony, logs, transport):
    """Twilio's customParameters.record, Vonage's `record` header, SIP's
    X-Voxline-Record: the call is recorded at the wire's rate, the caller on the left."""
    cls = client_class(transport)
    o = opts(reply_timeout_s=60)
    client = cls(f"127.0.0.1:{telephony.ports[transport]}", o)
    result = run(client.run([load_recording(SHORT, cls.rate)]))
    assert result.error is None and result.ended == "CALLER_HANGUP", result.events[-3:]
    call_id = getattr(client, "sip_call_id", "") or client.call_id
    rec = record_of(logs, call_id)
    assert rec["transport"] == transport
    path = recording_path(logs / "config_telephony.db", rec["session_id"])
    assert rec["recording"] == path.name
    audio, rate = sf.read(str(path), dtype="int16", always_2d=True)
    assert rate == cls.rate and audio.shape[1] == 2
    assert abs(len(audio) / rate - result.audio_sent_ms / 1000) <= 0.1
    wire = Encoding.MULAW if transport in ("twilio", "sip") else Encoding.PCM16
    sent = as_received(result.caller_frames, CallAudioFormat(wire, rate))
    n = min(len(sent), len(audio))
    # SIP's jitter buffer may move the caller's audio a frame or two: best alignment.
    best = max(np.corrcoef(audio[s:n, 0], sent[:n - s])[0, 1] for s in range(0, 481, 160))
    assert best > 0.95, best
    assert active_windows(audio[:, 1], rate).sum() >= 10  # the greeting and the answer


# ---------------------------------------------------------------- a tenant that opts in

REC_KEY, PLAIN_KEY = "rec-tenant-key-3c9e1d7a5b", "plain-tenant-key-8f2a6b0c4d"


@pytest.mark.own_server
def test_a_tenant_that_opts_in_records_its_consented_calls(tmp_path, logs):
    config = tmp_path / "config-recording.yaml"
    config.write_text(f"""
limits: {{idle_timeout_s: 4}}
records: {{path: {tmp_path / 'records.db'}}}
auth:
  tenants:
    - {{name: rec, api_key_env: VOXLINE_REC_KEY, profiles: [order_status], recording: true}}
    - {{name: plain, api_key_env: VOXLINE_PLAIN_KEY, profiles: [order_status]}}
""")
    env = {"VOXLINE_REC_KEY": REC_KEY, "VOXLINE_PLAIN_KEY": PLAIN_KEY}
    with local_server(config, logs / "server_recording.log", env=env) as address:
        results = {}
        for key, record in ((REC_KEY, True), (REC_KEY, False), (PLAIN_KEY, True)):
            o = opts(profile="order_status", record=record)
            result = run(place_call(Connection(address, api_key=key), [], o))
            assert result.error is None, result.error
            results[(key, record)] = record_of(
                tmp_path, o.call_id,
                records=lambda p: ended_records(p / "records.db"))
    recorded = results[(REC_KEY, True)]
    assert recorded["tenant"] == "rec" and recorded["recording_s"] > 1
    assert recording_path(tmp_path / "records.db", recorded["session_id"]).is_file()
    for rec in (results[(REC_KEY, False)], results[(PLAIN_KEY, True)]):
        assert rec["recording"] == ""
        assert not recording_path(tmp_path / "records.db", rec["session_id"]).exists()


# ---------------------------------------------------------------- the recorder and the store


def test_the_recorder_places_agent_audio_as_heard_and_silences_key_presses(tmp_path):
    """Chunks play after what was queued, a clear cuts what had not played, a key press
    is silenced, and both sides end with the caller's audio."""
    rate = 8000
    rng = np.random.default_rng(7)
    caller = (0.1 * rng.standard_normal(6 * rate)).astype(np.float32)
    path = tmp_path / "recordings" / "s1.wav"
    recorder = CallRecorder(path, rate, "unit")
    frame = rate // 50
    for i in range(0, len(caller), frame):
        at = i // frame  # 20 ms frames
        if at == 50:  # 1 s: two chunks sent at once, the second queued behind the first
            recorder.agent(np.full(rate // 2, 0.5, np.float32))
            recorder.agent(np.full(rate, 0.25, np.float32))
        if at == 100:  # 2 s: barge-in with 0.5 s of the second chunk still to play
            recorder.cleared()
        if at == 200:  # 4 s: a key press of 40 ms reported
            recorder.dtmf(40)
        recorder.caller(caller[i:i + frame])
    recorder.agent(np.full(rate, 0.5, np.float32))  # sent at the end: never heard
    got = run(recorder.close())
    assert got.file == "s1.wav" and got.seconds == 6.0
    audio, sr = sf.read(str(path), dtype="int16", always_2d=True)
    assert sr == rate and len(audio) == 6 * rate
    right = audio[:, 1]
    assert (right[:rate] == 0).all()
    assert (right[rate:int(1.5 * rate)] == 16384).all()  # 0.5 at 1.0-1.5 s
    assert (right[int(1.5 * rate):2 * rate] == 8192).all()  # 0.25 until the clear
    assert (right[2 * rate:] == 0).all()
    left = audio[:, 0].astype(np.int32)
    expected = np.clip(np.round(caller * 32768), -32768, 32767).astype(np.int32)
    quiet = slice(4 * rate - int(0.04 * rate), 4 * rate + int(0.06 * rate))
    assert not left[quiet].any()
    expected[quiet] = 0
    assert np.array_equal(left, expected)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_failing_disk_stops_the_recording_not_the_call(tmp_path, caplog, monkeypatch):
    """A write that fails logs an error, keeps what was written and takes every later
    sample without raising; a folder that cannot be made leaves no recording."""
    rate = 8000
    path = tmp_path / "recordings" / "s2.wav"
    recorder = CallRecorder(path, rate, "disk")
    recording_module._writer.submit(lambda: None).result()  # the file is open
    wav = recorder._file._wav
    assert wav is not None
    real, calls = wav.writeframes, []

    def full_disk(data: bytes) -> None:  # the fault: ENOSPC on the third block
        calls.append(len(data))
        if len(calls) >= 3:
            raise OSError(28, "No space left on device")
        real(data)

    monkeypatch.setattr(wav, "writeframes", full_disk)
    with caplog.at_level(logging.ERROR):
        for _ in range(10 * 50):
            recorder.caller(np.full(rate // 50, 0.1, np.float32))
            recorder.agent(np.full(rate // 50, 0.1, np.float32))
        got = run(recorder.close())
    assert got.file == "s2.wav" and got.seconds == 2.0  # the two blocks written
    assert sf.info(str(path)).frames == 2 * rate
    assert any("recording stopped" in r.getMessage() for r in caplog.records)

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        recorder = CallRecorder(blocked / "s3.wav", rate, "nofolder")
        recorder.caller(np.zeros(rate, np.float32))
        got = run(recorder.close())
    assert got.file == "" and got.seconds == 0
    assert any("recording stopped" in r.getMessage() for r in caplog.records)


def test_retention_removes_old_recordings_with_their_records(tmp_path):
    db = tmp_path / "calls.db"
    store = RecordStore(db)
    now = time.time()
    folder = recordings_dir(db)
    folder.mkdir()
    for session, age_days in (("old", 3), ("new", 0)):
        rec = CallRecord(f"call-{session}", session, "recorded", "", now - age_days * 86400,
                         ended_at=now - age_days * 86400, reason="CALLER_HANGUP",
                         recording=f"{session}.wav", recording_s=1.0)
        store.write(rec)
        (folder / f"{session}.wav").write_bytes(b"RIFF")
    # Files whose record was never written (a crash): the old one goes, the new one
    # (a call in progress) stays. old.wav is new on disk but goes with its record.
    for name, age_days in (("orphan-old", 3), ("orphan-new", 0)):
        (folder / f"{name}.wav").write_bytes(b"RIFF")
        os.utime(folder / f"{name}.wav", (now - age_days * 86400,) * 2)
    assert store.purge(retention_days=1) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["new.wav", "orphan-new.wav"]
    assert [r["call_id"] for r in store.recent()] == ["call-new"]
    assert [r["call_id"] for r in store.recent(recorded=True)] == ["call-new"]
    with pytest.raises(ValueError, match="not a session id"):
        recording_path(db, "../calls")
