"""Random and malformed messages, over 10,000 of them, on Converse and the Riva-compatible
services: every request ends with a status the server chose (no INTERNAL, no UNKNOWN,
no hang), and the server is healthy and serves a normal call and Recognize afterwards.

Deterministic: the messages come from one seeded generator (only the order in which
concurrent requests interleave varies from run to run). Each request goes through
grpc-python's generic `stream_stream` / `unary_unary` with identity serializers, so
bytes that are no protobuf at all reach the server as they are.

Bugs it found, fixed: a unary request that is not its message type got UNKNOWN
(grpc-python's asyncio server parses it before the handler; `transport/handlers.py` now
has unary handlers parse their own bytes and answer INVALID_ARGUMENT); a sequence-number
jump of 2^32 frames crashed the call (`CallEnded.frames_lost` is capped at the uint32
maximum); a NUL in Riva synthesis text failed in espeak with INTERNAL (control characters
are not spoken)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as ra
from riva.client.proto import riva_tts_pb2 as rtts

from tests.conftest import DATA, run
from voxline.bench import riva_references
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc
from voxline.wer import wer

SEED = 20261125
MESSAGES = 10_000  # messages the client must have sent (stream messages + unary requests)
PLANNED = 11_500  # messages generated: streams the server ends early leave some unsent
CONCURRENCY = 8  # requests in flight at once
REQUEST_TIMEOUT_S = 60.0  # a request still open after this is a hang
TOTAL_TIMEOUT_S = 420.0  # the whole fuzz run

CONVERSE = "/voxline.v1.VoiceAgent/Converse"
SERVER_INFO = "/voxline.v1.VoiceAgent/GetServerInfo"
ASR, TTS = "nvidia.riva.asr.RivaSpeechRecognition", "nvidia.riva.tts.RivaSpeechSynthesis"
STREAMING_RECOGNIZE = f"/{ASR}/StreamingRecognize"
RECOGNIZE = f"/{ASR}/Recognize"
ASR_CONFIG = f"/{ASR}/GetRivaSpeechRecognitionConfig"
SYNTHESIZE_ONLINE = f"/{TTS}/SynthesizeOnline"
SYNTHESIZE = f"/{TTS}/Synthesize"
TTS_CONFIG = f"/{TTS}/GetRivaSynthesisConfig"

# When the server answers a stream while its client is still writing, grpc-python's
# client may report its own INTERNAL instead of the server's status (a race in the
# client library: the same stream, sent again, gets the server's status). A stream
# that gets it is sent again (up to RACE_RETRIES times, pausing after each message so
# the server's answer lands before the next write) for the server's own status.
CLIENT_RACE = "Internal error from Core"
RACE_RETRIES = 2
RACE_PAUSE_S = 0.02  # between messages when sent again (twice that the second time)
# grpc-python's client's own status when the request's deadline passes.
CLIENT_DEADLINE = "Deadline Exceeded"
# What the server may answer a malformed or random request with. DEADLINE_EXCEEDED
# counts only with the server's own message (an idle or engine timeout), not the
# client's deadline, and OUT_OF_RANGE is a stream past limits.max_call_s.
EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE}

_NP = np.random.default_rng(SEED)
# Quiet audio to cut frames from (what a line carries between words), per codec: μ-law
# and A-law codes next to zero, and PCM16 within ±64. Quiet keeps the fuzz cheap (no
# speech: no transcription); some frames are random bytes, which is loud noise.
_QUIET = {
    "mulaw": _NP.choice(np.array([0xFF, 0xFE, 0x7F, 0x7E], np.uint8), 1 << 16).tobytes(),
    "alaw": _NP.choice(np.array([0xD5, 0x55, 0xD4, 0x54], np.uint8), 1 << 16).tobytes(),
    "pcm16": _NP.integers(-64, 64, 1 << 15).astype("<i2").tobytes(),
    "float32": (_NP.standard_normal(1 << 14) * 1e-3).astype("<f4").tobytes(),
    "float64": (_NP.standard_normal(1 << 13) * 1e-3).astype("<f8").tobytes(),
    "pcm8": _NP.integers(126, 130, 1 << 16).astype(np.uint8).tobytes(),
    "pcm24": b"".join(struct.pack("<i", int(v))[:3] for v in _NP.integers(-9000, 9000, 4096)),
    "pcm32": (_NP.integers(-1 << 22, 1 << 22, 1 << 14)).astype("<i4").tobytes(),
}
_CONVERSE_CODECS = {pb.AUDIO_ENCODING_PCM16: "pcm16", pb.AUDIO_ENCODING_MULAW: "mulaw",
                    pb.AUDIO_ENCODING_ALAW: "alaw"}
_RIVA_CODECS = {ra.LINEAR_PCM: "pcm16", ra.ENCODING_UNSPECIFIED: "pcm16", ra.MULAW: "mulaw",
                ra.ALAW: "alaw"}
PROFILES = ["", "order_status", "coffee_shop", "chatty"]
_WORDS = ["hi", "ok", "yes", "no", "order", "Monday", "thanks", "nine", "Acme", "call"]


def _identity(b: bytes) -> bytes:
    return b


# ----------------------------------------------------------------------- generators


def _text(rng: random.Random, n: int = 40) -> str:
    alphabet = "abcXYZ019 _-.,?!\x00\x07\n\u00e9\u4e2d\U0001f4de\u202e\ufeff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))


def _quiet(rng: random.Random, codec: str, n: int) -> bytes:
    """`n` bytes of quiet audio in `codec` (at most 64 KiB), cut from its buffer, or
    random bytes."""
    n = min(n, 1 << 16)
    if rng.random() < 0.05:
        return rng.randbytes(n)
    pool = _QUIET[codec]
    n = min(n, len(pool))
    start = rng.randrange(len(pool) - n + 1)
    return pool[start:start + n]


def _damage(rng: random.Random, data: bytes) -> bytes:
    """A valid message cut short and with one byte flipped (often no longer valid)."""
    cut = bytearray(data[: rng.randint(0, len(data))])
    if cut:
        cut[rng.randrange(len(cut))] ^= rng.choice([0xFF, 0x80, 0x01])
    return bytes(cut)


def _garbage(rng: random.Random) -> bytes:
    """Bytes that are often no protobuf: random, or protobuf-looking with a bad tag, a
    length past the end, a varint too long."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 300))
    if kind == 1:
        return bytes([rng.choice([0x0A, 0x12, 0x1A, 0x22])]) + bytes([0x7F]) + rng.randbytes(3)
    if kind == 2:
        return b"\x08" + b"\xff" * rng.randint(10, 12)
    if kind == 3:
        return bytes([rng.choice([0x0F, 0x07, 0x0E, 0x00])]) + rng.randbytes(rng.randint(0, 8))
    return bytes([0x0A, 0x02, 0xC3, 0x28])  # a string field that is not UTF-8


def _fuzz_bytes(rng: random.Random, valid: bytes) -> bytes:
    """Mostly `valid`; sometimes damaged, sometimes garbage."""
    r = rng.random()
    if r < 0.12:
        return _damage(rng, valid)
    if r < 0.2:
        return _garbage(rng)
    return valid


def _metadata(rng: random.Random) -> tuple[tuple[str, str], ...] | None:
    """Call metadata (the session server has no API keys: a key is ignored)."""
    if rng.random() < 0.8:
        return None
    return (("x-api-key", rng.choice(["", "x" * 40, "riva-key", "\u00e9".encode().hex()])),)


# ---- Converse


def _call_format(rng: random.Random) -> tuple[int, int]:
    return rng.choice([(pb.AUDIO_ENCODING_MULAW, 8000), (pb.AUDIO_ENCODING_ALAW, 8000),
                       (pb.AUDIO_ENCODING_PCM16, 8000), (pb.AUDIO_ENCODING_PCM16, 16000),
                       (pb.AUDIO_ENCODING_MULAW, 16000)])


def _printable(rng: random.Random, lo: int, hi: int) -> str:
    alphabet = "abcXYZ019-_.:@+ \u00e9\u4e2d"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi))).strip()


def _valid_start(rng: random.Random, encoding: int, rate: int) -> pb.CallInput:
    """A CallStart a gateway may send: random but valid values."""
    return pb.CallInput(start=pb.CallStart(
        call_id="fuzz-" + _printable(rng, 0, 40), agent_profile=rng.choice(PROFILES),
        audio_format=pb.AudioFormat(encoding=encoding, sample_rate_hz=rate),
        metadata={"k" + _printable(rng, 0, 12): _printable(rng, 0, 40)
                  for _ in range(rng.randint(0, 3))},
        end_of_turn_silence_ms=rng.choice([0, 200, 500, 1200, 3000])))


def _random_metadata(rng: random.Random) -> dict[str, str]:
    """A few random entries, or more entries, a longer key or value than a call may have."""
    r = rng.random()
    if r < 0.1:
        return {f"k{i}": "v" for i in range(rng.choice([17, 100]))}
    if r < 0.2:
        return {"k" * rng.choice([64, 65, 1000]): "v" * rng.choice([256, 257, 5000])}
    return {_text(rng, 10): _text(rng) for _ in range(rng.randint(0, 3))}


def _random_call_input(rng: random.Random) -> bytes:
    """Any CallInput, fields random (often invalid), or bytes that are none."""
    kind = rng.randrange(9)
    if kind == 0:
        return _garbage(rng)
    if kind == 1:
        msg = pb.CallInput(start=pb.CallStart(
            call_id=_text(rng, 200), agent_profile=rng.choice([*PROFILES, "faults", "..",
                                                               "../profiles", _text(rng)]),
            audio_format=pb.AudioFormat(encoding=rng.randint(0, 9),
                                        sample_rate_hz=rng.choice([0, 8000, 16000, 44100,
                                                                   2**32 - 1])),
            metadata=_random_metadata(rng),
            end_of_turn_silence_ms=rng.choice([0, 1, 199, 500, 3001, 2**32 - 1]),
            resume_token=rng.choice(["", "", _text(rng, 60), "x" * 32])))
    elif kind == 2:
        msg = pb.CallInput(audio=pb.AudioChunk(
            audio=rng.randbytes(rng.choice([0, 1, 159, 320, 641, 3201, 6400, 20000])),
            sequence_number=rng.choice([0, 1, 2**63, 2**64 - 1])))
    elif kind == 3:
        msg = pb.CallInput(dtmf=pb.DtmfDigit(digit=rng.choice(["", "00", "E", "*#",
                                                               _text(rng, 3)]),
                                             duration_ms=rng.randint(0, 2**32 - 1)))
    elif kind == 4:
        msg = pb.CallInput(hangup=pb.Hangup(reason=_text(rng)))
    elif kind == 5:
        msg = pb.CallInput(mark=pb.PlaybackMark(turn_id=rng.randint(0, 2**32 - 1),
                                                played_ms=rng.randint(0, 2**32 - 1)))
    elif kind == 6:
        msg = pb.CallInput()
    elif kind == 7:
        msg = _valid_start(rng, *_call_format(rng))
    else:  # a frame of a size no format allows (over 200 ms at 16 kHz PCM16)
        msg = pb.CallInput(audio=pb.AudioChunk(audio=bytes(6402), sequence_number=1))
    data = msg.SerializeToString()
    return _damage(rng, data) if rng.random() < 0.15 and data else data


def _converse_garbage(rng: random.Random) -> list[bytes]:
    """A stream of a few random CallInputs, without a valid start first."""
    return [_random_call_input(rng) for _ in range(rng.randint(1, 6))]


def _converse_call(rng: random.Random) -> list[bytes]:
    """A valid start, then dozens of in-call messages with random contents (audio frames
    of allowed sizes, marks, DTMF digits), and in half the calls one malformed message
    in the second half; a Hangup last in some."""
    encoding, rate = _call_format(rng)
    codec = _CONVERSE_CODECS[encoding]
    width = 2 if codec == "pcm16" else 1
    out = [_valid_start(rng, encoding, rate).SerializeToString()]
    n = rng.randint(24, 64)
    bad_at = rng.randrange(n // 2, n) if rng.random() < 0.5 else None
    seq = rng.choice([0, 1, 1000, 2**32 - 5, 2**63])
    for i in range(n):
        if i == bad_at:
            out.append(_random_call_input(rng))
            continue
        r = rng.random()
        if r < 0.85:
            ms = rng.choice([10, 20, 20, 20, 20, 30, 40, 60, 100, 200])
            jump = rng.random()
            # Sequence numbers: increasing, with a gap now and then (lost frames), a
            # restart, or a jump anywhere in the uint64 range.
            if jump < 0.9:
                seq += 1
            elif jump < 0.96:
                seq += rng.randint(2, 50)
            elif jump < 0.98:
                seq = rng.randint(0, 100)
            else:
                seq = rng.randint(seq, 2**64 - 1)
            seq %= 2**64
            msg = pb.CallInput(audio=pb.AudioChunk(
                audio=_quiet(rng, codec, rate * ms // 1000 * width), sequence_number=seq))
        elif r < 0.93:
            msg = pb.CallInput(mark=pb.PlaybackMark(turn_id=rng.randint(0, 2**32 - 1),
                                                    played_ms=rng.randint(0, 2**32 - 1)))
        else:  # mostly digits that do not transfer the call ("0" does)
            digit = "0" if rng.random() < 0.05 else rng.choice("123456789*#ABCD")
            msg = pb.CallInput(dtmf=pb.DtmfDigit(digit=digit, duration_ms=rng.randint(0, 500)))
        out.append(msg.SerializeToString())
    if rng.random() < 0.3:
        out.append(pb.CallInput(hangup=pb.Hangup(reason=_text(rng))).SerializeToString())
    return out


# ---- Riva ASR


def _endpointing(rng: random.Random, valid: bool) -> rasr.EndpointingConfig:
    ep = rasr.EndpointingConfig()
    if valid:
        if rng.random() < 0.5:
            ep.start_history, ep.start_threshold = rng.randint(50, 1000), rng.uniform(0.65, 1)
        stop = rng.randint(300, 5000)
        if rng.random() < 0.7:
            ep.stop_history = stop
        if rng.random() < 0.4:
            ep.stop_threshold = rng.uniform(0.5, 1)
        if rng.random() < 0.3:
            ep.stop_history_eou = rng.randint(40, 140)
        return ep
    floats = [0.0, -1.0, 0.5, 1.0, 1.0001, 2.0, float("nan"), float("inf"), -float("inf"),
              1e-30, 3.4e38]
    ints = [-(2**31), -1, 0, 1, 31, 32, 99, 100, 500, 10000, 10001, 2**31 - 1]
    for name in ("start_history", "stop_history", "stop_history_eou"):
        if rng.random() < 0.6:
            setattr(ep, name, rng.choice(ints))
    for name in ("start_threshold", "stop_threshold", "stop_threshold_eou"):
        if rng.random() < 0.6:
            setattr(ep, name, rng.choice(floats))
    return ep


def _recognition_config(rng: random.Random, valid: bool) -> rasr.RecognitionConfig:
    """A RecognitionConfig, with fields a Riva client may send (valid) or random."""
    config = rasr.RecognitionConfig(
        max_alternatives=rng.choice([0, 1, 3]), profanity_filter=rng.random() < 0.3,
        enable_word_time_offsets=rng.random() < 0.3,
        enable_automatic_punctuation=rng.random() < 0.5,
        verbatim_transcripts=rng.random() < 0.5, model=rng.choice(["", "", _text(rng, 20)]))
    if rng.random() < 0.3:
        config.speech_contexts.add(phrases=[_text(rng, 12) for _ in range(rng.randint(0, 4))],
                                   boost=rng.choice([0.0, 4.0, -100.0, float("nan")]))
    if rng.random() < 0.2:
        config.custom_configuration[_text(rng, 8)] = _text(rng, 8)
    if valid:
        config.encoding, config.sample_rate_hertz = rng.choice([
            (ra.LINEAR_PCM, 16000), (ra.LINEAR_PCM, 8000), (ra.LINEAR_PCM, 44100),
            (ra.LINEAR_PCM, 48000), (ra.ENCODING_UNSPECIFIED, 16000), (ra.MULAW, 8000),
            (ra.ALAW, 8000), (ra.MULAW, 16000)])
        config.language_code = rng.choice(["", "en-US", "en", "EN-gb"])
        config.audio_channel_count = rng.choice([0, 1, 1, 2])
        if rng.random() < 0.4:
            config.endpointing_config.CopyFrom(_endpointing(rng, valid=True))
    else:
        config.encoding = rng.choice([*range(6), 20, 21, 99, 2**31 - 1])
        config.sample_rate_hertz = rng.choice([-1, 0, 1, 3999, 4000, 8000, 16000, 192000,
                                               192001, 2**31 - 1])
        config.language_code = rng.choice(["", "en-US", "es-US", "de", "-", _text(rng, 10)])
        config.audio_channel_count = rng.choice([-(2**31), -1, 0, 1, 2, 32, 33, 2**31 - 1])
        config.enable_separate_recognition_per_channel = rng.random() < 0.2
        if rng.random() < 0.7:
            config.endpointing_config.CopyFrom(_endpointing(rng, valid=False))
        if rng.random() < 0.2:
            config.diarization_config.enable_speaker_diarization = True
    return config


_WAV_CODECS = [(1, 8, "pcm8"), (1, 16, "pcm16"), (1, 24, "pcm24"), (1, 32, "pcm32"),
               (3, 32, "float32"), (3, 64, "float64"), (6, 8, "alaw"), (7, 8, "mulaw")]


def _wav(rng: random.Random, valid: bool) -> tuple[bytes, str, int]:
    """A WAV header (RIFF, an optional metadata chunk, 'fmt ', 'data') and the codec
    and frame size of the samples after it; random fields when not `valid`."""
    tag, bits, codec = rng.choice(_WAV_CODECS)
    channels = rng.choice([1, 1, 2])
    rate = rng.choice([8000, 11025, 16000, 22050, 44100, 48000])
    extensible = rng.random() < 0.2
    if not valid:
        r = rng.random()
        if r < 0.25:
            tag = rng.choice([0, 2, 0x55, 0xFFFF])
        elif r < 0.5:
            channels = rng.choice([0, 33, 65535])
        elif r < 0.7:
            rate = rng.choice([0, 1, 3999, 192001, 2**32 - 1])
        else:
            bits = rng.choice([0, 1, 12, 40, 65535])
    block = channels * max(1, (bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate,
                      rate * block % 2**32, block % 2**16, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + bytes(14)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if rng.random() < 0.3:  # a metadata chunk, maybe of odd length (padded)
        meta = rng.randbytes(rng.randint(0, 41))
        chunks = (b"LIST" + struct.pack("<I", len(meta)) + meta + b"\0" * (len(meta) & 1)
                  + chunks)
    if not valid and rng.random() < 0.3:  # 'data' before 'fmt '
        chunks = b"data" + struct.pack("<I", 0) + chunks
    size = rng.choice([0, 0xFFFFFFFF, rng.randint(0, 20000)])
    riff = b"RIFF" + struct.pack("<I", rng.randint(0, 2**32 - 1)) + b"WAVE"
    return riff + chunks + b"data" + struct.pack("<I", size), codec, max(block, 1)


def _riva_audio(rng: random.Random, codec: str, n: int) -> bytes:
    return _quiet(rng, codec, n)


def _streaming_config_request(rng: random.Random, valid: bool) -> rasr.StreamingRecognizeRequest:
    return rasr.StreamingRecognizeRequest(streaming_config=rasr.StreamingRecognitionConfig(
        config=_recognition_config(rng, valid), interim_results=rng.random() < 0.5))


def _asr_garbage(rng: random.Random) -> list[bytes]:
    """A few random StreamingRecognizeRequests: random configs, audio first, bytes."""
    out = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.5:
            msg = _streaming_config_request(rng, valid=rng.random() < 0.2)
        elif r < 0.75:
            msg = rasr.StreamingRecognizeRequest(audio_content=rng.randbytes(
                rng.choice([0, 1, 3, 1000])))
        else:
            out.append(_garbage(rng))
            continue
        out.append(_fuzz_bytes(rng, msg.SerializeToString()))
    return out


def _asr_stream(rng: random.Random) -> list[bytes]:
    """A valid streaming_config (the audio raw, or a WAV file when the config leaves the
    format unset), then dozens of audio chunks of random sizes (quiet, some random
    bytes), and in half the streams one malformed request in the second half."""
    request = _streaming_config_request(rng, valid=True)
    config = request.streaming_config.config
    wav = rng.random() < 0.3
    if wav:
        config.encoding, config.sample_rate_hertz = ra.ENCODING_UNSPECIFIED, 0
        header, codec, _ = _wav(rng, valid=rng.random() < 0.7)
        rate = 16000
    else:
        header, codec, rate = b"", _RIVA_CODECS[config.encoding], config.sample_rate_hertz
    out = [request.SerializeToString()]
    n = rng.randint(24, 64)
    bad_at = rng.randrange(n // 2, n) if rng.random() < 0.5 else None
    for i in range(n):
        if i == bad_at:
            r = rng.random()
            if r < 0.4:
                out.append(_garbage(rng))
            elif r < 0.7:  # a second config
                out.append(_streaming_config_request(rng, rng.random() < 0.5)
                           .SerializeToString())
            else:
                out.append(_damage(rng, rasr.StreamingRecognizeRequest(
                    audio_content=_riva_audio(rng, codec, 400)).SerializeToString()))
            continue
        r = rng.random()
        if r < 0.9:
            size = rng.choice([0, 1, 3, 160, 320, 333, 640, 1600, rate // 10 * 2])
            audio = _riva_audio(rng, codec, size)
            if header:
                audio, header = header + audio, b""
            msg = rasr.StreamingRecognizeRequest(audio_content=audio)
        elif r < 0.95:  # a request with no audio (skipped)
            msg = rasr.StreamingRecognizeRequest()
        else:
            msg = rasr.StreamingRecognizeRequest()
            msg.id.value = _text(rng, 20)
            msg.runtime_config[_text(rng, 8)] = _text(rng, 8)
        out.append(msg.SerializeToString())
    return out


def _recognize(rng: random.Random) -> bytes:
    """A RecognizeRequest: a valid or random config with a short piece of audio (raw,
    WAV, FLAC or Ogg magic, empty), often damaged, or bytes that are none."""
    r = rng.random()
    if r < 0.1:
        return _garbage(rng)
    valid = r < 0.55
    config = _recognition_config(rng, valid)
    a = rng.random()
    if a < 0.6:
        codec = _RIVA_CODECS.get(config.encoding, "pcm16")
        audio = _riva_audio(rng, codec, rng.choice([1, 2, 160, 1601, 8000, 16000]))
    elif a < 0.85:
        config.encoding, config.sample_rate_hertz = ra.ENCODING_UNSPECIFIED, 0
        header, codec, block = _wav(rng, valid=rng.random() < 0.5)
        audio = header + _riva_audio(rng, codec, block * rng.choice([0, 1, 800, 4000]))
    elif a < 0.95:
        audio = rng.choice([b"fLaC", b"OggS", b"RIFF", b"RIF", b"RIFF\0\0\0\0WAVX"]) + \
            rng.randbytes(rng.randint(0, 200))
    else:
        audio = b""
    data = rasr.RecognizeRequest(config=config, audio=audio).SerializeToString()
    return _damage(rng, data) if rng.random() < 0.1 else data


# ---- Riva TTS


def _tts_text(rng: random.Random, budget: int) -> str:
    """Short text to speak (TTS costs CPU by the character): words, punctuation,
    whitespace, and now and then characters a voice may not know."""
    r = rng.random()
    if r < 0.5:
        text = rng.choice(_WORDS)
    elif r < 0.7:
        text = rng.choice(["", " ", ".", ",", "?!", "...", "\n", "\t", "-"])
    elif r < 0.9:
        text = _text(rng, 6)
    else:
        text = rng.choice(["\u4e2d\u6587", "\U0001f4de\U0001f4de", "\x00", "\u202e\u0301",
                           "$3.50", "#1", "ÆØÅ", "\ufeff", "<speak>", "&amp;"])
    return text[:budget]


def _synthesize_request(rng: random.Random, valid: bool, text: str) -> rtts.SynthesizeSpeechRequest:
    request = rtts.SynthesizeSpeechRequest(
        text=text, voice_name=rng.choice(["", "piper-joe", "English-US.Female-1",
                                          _text(rng, 12)]),
        custom_dictionary=rng.choice(["", "", _text(rng, 20)]),
        enable_word_time_offsets=rng.random() < 0.2)
    if valid:
        request.language_code = rng.choice(["", "en-US", "en", "EN-GB"])
        request.encoding = rng.choice([ra.ENCODING_UNSPECIFIED, ra.LINEAR_PCM, ra.MULAW,
                                       ra.ALAW])
        request.sample_rate_hz = rng.choice([0, 8000, 16000, 22050, 44100, 48000,
                                             rng.randint(8000, 48000)])
    else:
        request.language_code = rng.choice(["", "en-US", "fr-FR", "x", _text(rng, 8)])
        request.encoding = rng.choice([*range(6), 20, 99])
        request.sample_rate_hz = rng.choice([-1, 0, 1, 7999, 8000, 48001, 2**31 - 1])
        if rng.random() < 0.3:
            request.zero_shot_data.audio_prompt = rng.randbytes(rng.randint(0, 50))
            request.zero_shot_data.sample_rate_hz = rng.choice([0, 16000])
    if rng.random() < 0.2:
        request.custom_configuration[_text(rng, 8)] = _text(rng, 8)
    return request


def _tts_garbage(rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            out.append(_garbage(rng))
        else:
            request = _synthesize_request(rng, rng.random() < 0.3, _tts_text(rng, 12))
            out.append(_fuzz_bytes(rng, request.SerializeToString()))
    return out


def _tts_stream(rng: random.Random) -> list[bytes]:
    """A valid first request, then dozens of text pieces (mostly empty or punctuation, a
    few words: at most 24 characters in all), and in half the streams one malformed
    request in the second half."""
    budget = 24
    first = _synthesize_request(rng, True, _tts_text(rng, 8))
    budget -= len(first.text)
    out = [first.SerializeToString()]
    n = rng.randint(20, 56)
    bad_at = rng.randrange(n // 2, n) if rng.random() < 0.5 else None
    for i in range(n):
        if i == bad_at:
            if rng.random() < 0.5:
                out.append(_garbage(rng))
            else:
                out.append(_damage(rng, rtts.SynthesizeSpeechRequest(
                    text="Hello there.").SerializeToString()))
            continue
        text = _tts_text(rng, budget) if rng.random() < 0.25 else rng.choice(["", "", " "])
        budget -= len(text)
        # Later requests' other fields are ignored (the first request's hold).
        msg = rtts.SynthesizeSpeechRequest(text=text) if rng.random() < 0.8 else \
            _synthesize_request(rng, rng.random() < 0.5, text)
        out.append(msg.SerializeToString())
    return out


def _synthesize(rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return _garbage(rng)
    request = _synthesize_request(rng, rng.random() < 0.6, _tts_text(rng, 12))
    data = request.SerializeToString()
    return _damage(rng, data) if rng.random() < 0.1 else data


def _model_config(rng: random.Random, cls, names: list[str]) -> bytes:
    if rng.random() < 0.25:
        return _garbage(rng)
    return _fuzz_bytes(rng, cls(model_name=rng.choice([*names, _text(rng, 20)]))
                       .SerializeToString())


def _server_info(rng: random.Random) -> bytes:
    # ServerInfoRequest has no fields: anything that parses is unknown fields.
    return rng.choice([b"", b"\x08\x01", b"\x12\x00", rng.randbytes(rng.randint(0, 20))])


# ----------------------------------------------------------------------- requests


@dataclass
class Job:
    method: str
    streaming: bool
    messages: list[bytes]
    metadata: tuple[tuple[str, str], ...] | None = None


@dataclass
class Outcome:
    method: str
    code: grpc.StatusCode
    details: str
    sent: int  # messages the client sent (the first time, when sent again)
    messages: list[bytes] = field(repr=False)
    retries: int = 0


# (weight, method, streaming, generator): how often each kind of request is drawn.
RECIPES = [
    (10, CONVERSE, True, _converse_garbage),
    (9, CONVERSE, True, _converse_call),
    (8, STREAMING_RECOGNIZE, True, _asr_garbage),
    (7, STREAMING_RECOGNIZE, True, _asr_stream),
    (4, SYNTHESIZE_ONLINE, True, _tts_garbage),
    (4, SYNTHESIZE_ONLINE, True, _tts_stream),
    (60, RECOGNIZE, False, _recognize),
    (40, SYNTHESIZE, False, _synthesize),
    (15, ASR_CONFIG, False,
     lambda rng: _model_config(rng, rasr.RivaSpeechRecognitionConfigRequest,
                               ["", "whisper-tiny-en"])),
    (15, TTS_CONFIG, False,
     lambda rng: _model_config(rng, rtts.RivaSynthesisConfigRequest, ["", "piper-joe"])),
    (10, SERVER_INFO, False, _server_info),
]


def _jobs(rng: random.Random) -> list[Job]:
    jobs, planned = [], 0
    weights = [r[0] for r in RECIPES]
    while planned < PLANNED:
        _, method, streaming, make = rng.choices(RECIPES, weights)[0]
        messages = make(rng) if streaming else [make(rng)]
        jobs.append(Job(method, streaming, messages, _metadata(rng)))
        planned += len(messages)
    return jobs


async def _send_stream(channel: grpc.aio.Channel, job: Job, pause_s: float = 0.0
                       ) -> tuple[grpc.StatusCode, str, int]:
    """Send the stream's messages one by one while reading its responses, half-close,
    and return its status and how many messages were sent. Writing stops when the
    server has ended the stream; `pause_s` after each message gives the server's
    answer time to arrive before the next write (sending again after the race)."""
    call = channel.stream_stream(job.method, request_serializer=_identity,
                                 response_deserializer=_identity)(
        timeout=REQUEST_TIMEOUT_S, metadata=job.metadata)

    async def read() -> None:
        async for _ in call:
            pass

    reader = asyncio.ensure_future(read())
    sent = 0
    try:
        for m in job.messages:
            if reader.done():
                break
            await call.write(m)
            sent += 1
            if pause_s:
                await asyncio.wait([reader], timeout=pause_s)
        await call.done_writing()
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        pass  # the server ended the stream meanwhile: its status follows
    try:
        await reader
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", sent
    return grpc.StatusCode.OK, "", sent


async def _send_unary(channel: grpc.aio.Channel, job: Job, pause_s: float = 0.0
                      ) -> tuple[grpc.StatusCode, str, int]:
    call = channel.unary_unary(job.method, request_serializer=_identity,
                               response_deserializer=_identity)
    try:
        await call(job.messages[0], timeout=REQUEST_TIMEOUT_S, metadata=job.metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", 1
    return grpc.StatusCode.OK, "", 1


async def _send(channel: grpc.aio.Channel, job: Job) -> Outcome:
    send = _send_stream if job.streaming else _send_unary
    code, details, sent = await send(channel, job)
    retries = 0
    while code == grpc.StatusCode.INTERNAL and details == CLIENT_RACE and retries < RACE_RETRIES:
        retries += 1
        code, details, _ = await send(channel, job, pause_s=RACE_PAUSE_S * retries)
    return Outcome(job.method, code, details, sent, job.messages, retries)


def _verdict(o: Outcome) -> str:
    """'ok' (a status the server chose for the request), 'race' (the client's own
    INTERNAL, every time it was sent), or what is wrong on the server's side."""
    if o.code == grpc.StatusCode.INTERNAL and o.details == CLIENT_RACE:
        return "race"
    if o.code == grpc.StatusCode.DEADLINE_EXCEEDED and o.details == CLIENT_DEADLINE:
        return "hang"  # no status within REQUEST_TIMEOUT_S
    if o.code in EXPECTED:
        return "ok"
    return "server error"


def _report(bad: list[Outcome]) -> str:
    """The server errors, one line per distinct (method, status, message), with the
    shortest request or stream that got it."""
    groups: dict[tuple, list[Outcome]] = {}
    for o in bad:
        message = re.sub(r"\d{3,}", "N", o.details)[:160]  # one line for "out of range: N"
        groups.setdefault((o.method, o.code.name, message), []).append(o)
    lines = []
    for (method, code, details), found in sorted(groups.items(), key=lambda g: -len(g[1])):
        short = min(found, key=lambda o: (len(o.messages), sum(map(len, o.messages))))
        shown = [m[:80].hex() for m in short.messages[:4]]
        lines.append(f"{len(found)} x {method} -> {code} {details!r}; e.g. "
                     f"{len(short.messages)} message(s), first {shown}")
    return "\n".join(lines)


def test_fuzzed_requests_each_get_a_status_and_the_server_stays_up(server, logs):
    rng = random.Random(SEED)
    jobs = _jobs(rng)
    order = list(range(len(jobs)))
    rng.shuffle(order)  # the kinds of requests interleave

    async def scenario():
        async with grpc.aio.insecure_channel(server) as channel:
            slots = asyncio.Semaphore(CONCURRENCY)

            async def one(job: Job) -> Outcome:
                async with slots:
                    return await _send(channel, job)

            outcomes = await asyncio.gather(*(one(jobs[i]) for i in order))
            health = health_pb2_grpc.HealthStub(channel)
            statuses = {name: (await health.Check(health_pb2.HealthCheckRequest(
                service=name))).status for name in ("", "voxline.v1.VoiceAgent", ASR, TTS)}
            info = await pb_grpc.VoiceAgentStub(channel).GetServerInfo(pb.ServerInfoRequest())
            call = await _normal_call(channel)
            heard = await _normal_recognize(channel)
            return outcomes, statuses, info, call, heard

    started = time.perf_counter()
    try:
        outcomes, statuses, info, call, heard = run(asyncio.wait_for(scenario(),
                                                                     TOTAL_TIMEOUT_S))
    except TimeoutError:
        pytest.fail(f"the fuzz run did not end within {TOTAL_TIMEOUT_S:g} s (a hang?)")
    elapsed = time.perf_counter() - started

    sent = sum(o.sent for o in outcomes)
    by_method = Counter()
    for o in outcomes:
        by_method[o.method.rsplit("/", 1)[1]] += o.sent
    histogram = Counter((o.method.rsplit("/", 1)[1], o.code.name) for o in outcomes)
    verdicts = Counter(_verdict(o) for o in outcomes)
    retried = sum(o.retries > 0 for o in outcomes)
    print(f"\nfuzz: {len(outcomes)} requests, {sent} messages sent in {elapsed:.1f} s; "
          f"per method {dict(by_method)}; verdicts {dict(verdicts)}; "
          f"{retried} sent again after the client race")
    for (method, code), n in sorted(histogram.items()):
        print(f"  {method:32} {code:20} {n}")
    bad = [o for o in outcomes if _verdict(o) not in ("ok", "race")]
    (logs / "fuzz.json").write_text(json.dumps({
        "requests": len(outcomes), "messages_sent": sent, "seconds": round(elapsed, 1),
        "sent_per_method": by_method, "verdicts": verdicts,
        "statuses": {f"{m} {c}": n for (m, c), n in sorted(histogram.items())},
        "server_errors": _report(bad).splitlines()}, indent=1))

    assert sent >= MESSAGES, (sent, dict(by_method))
    assert all(by_method[m.rsplit("/", 1)[1]] for _, m, _, _ in RECIPES), by_method
    # Both paths were reached: requests refused for what they carry, and requests served.
    for method in ("Converse", "StreamingRecognize", "SynthesizeOnline", "Recognize",
                   "Synthesize"):
        assert histogram[(method, "OK")] > 5, (method, histogram)
        assert histogram[(method, "INVALID_ARGUMENT")] > 5, (method, histogram)
    # The client's race is rare and never the last word on many streams.
    assert verdicts["race"] <= len(outcomes) // 100, verdicts
    assert all(s == health_pb2.HealthCheckResponse.SERVING for s in statuses.values()), statuses
    assert info.active_calls == 0
    assert call == ["accepted", "ended"], call
    reference = riva_references(DATA / "riva_examples")["en-US_sample.wav"]
    assert wer(reference, heard) <= 0.25, heard
    if bad:
        pytest.fail(f"{len(bad)} requests got a server error:\n{_report(bad)}")


async def _normal_call(channel: grpc.aio.Channel) -> list[str]:
    """A short call after the fuzz: start, a second of silence, hang up; the kinds of
    the accepted and ended events it gets (the greeting's audio and text omitted)."""
    frames = [pb.CallInput(audio=pb.AudioChunk(audio=b"\xff" * 160, sequence_number=i))
              for i in range(50)]
    messages = [pb.CallInput(start=pb.CallStart(call_id="after-fuzz", audio_format=pb.AudioFormat(
        encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hz=8000))), *frames,
        pb.CallInput(hangup=pb.Hangup(reason="done"))]
    kinds = []
    async for out in pb_grpc.VoiceAgentStub(channel).Converse(iter(messages),
                                                              timeout=REQUEST_TIMEOUT_S):
        kind = out.WhichOneof("payload")
        if kind in ("accepted", "ended"):
            kinds.append(kind)
            if kind == "ended":
                assert out.ended.reason == pb.CallEnded.CALLER_HANGUP, out.ended
    return kinds


async def _normal_recognize(channel: grpc.aio.Channel) -> str:
    """Riva's example file through Recognize, as transcribe_file_offline.py sends it."""
    audio = (DATA / "riva_examples" / "en-US_sample.wav").read_bytes()
    response = await rasr_grpc.RivaSpeechRecognitionStub(channel).Recognize(
        rasr.RecognizeRequest(config=rasr.RecognitionConfig(language_code="en-US"),
                              audio=audio), timeout=REQUEST_TIMEOUT_S)
    return "".join(r.alternatives[0].transcript for r in response.results)
