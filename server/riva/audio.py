"""Riva request audio -> 16 kHz float32 for the engines.

A request's audio may start with a WAV (RIFF) header: Riva's own file scripts send the
file's bytes as they are, with encoding and sample rate left unset, so the header
(rate, channels, sample format) wins over the config. Without one, the config says
what the bytes are: LINEAR_PCM (16-bit little-endian), MULAW or ALAW at
`sample_rate_hertz`. The first channel is kept; any rate is resampled to 16 kHz.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import soxr
from riva.client.proto import riva_audio_pb2 as ra

from voxline.audio.convert import decode as decode_codec
from voxline.audio.convert import encode as encode_codec
from voxline.audio.formats import ENGINE_RATE, Encoding

MIN_RATE, MAX_RATE = 4000, 192000
_MAX_HEADER = 64 * 1024  # a WAV header (with metadata chunks) longer than this is refused
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # written by recorders that stream before the length is known
_WAVE_TAGS = {1: "pcm", 3: "float", 6: "alaw", 7: "mulaw"}
_EXTENSIBLE = 0xFFFE
_MAGICS = (b"RIFF", b"fLaC", b"OggS")


class AudioError(ValueError):
    """The request's audio cannot be used as sent; the message says how to fix it."""


@dataclass(frozen=True)
class SampleFormat:
    codec: str  # pcm (signed ints; unsigned for 8-bit), float, mulaw, alaw
    width: int  # bytes per sample
    channels: int
    rate: int

    def __post_init__(self) -> None:
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise AudioError(f"sample rate {self.rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
        if not 1 <= self.channels <= 32:
            raise AudioError(f"{self.channels} audio channels; send 1 to 32")
        widths = {"pcm": (1, 2, 3, 4), "float": (4, 8), "mulaw": (1,), "alaw": (1,)}
        if self.width not in widths[self.codec]:
            raise AudioError(f"{self.width * 8}-bit {self.codec} samples are not supported; "
                             "send 16-bit PCM, μ-law or A-law")

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels


def encoding_name(value: int) -> str:
    try:
        return ra.AudioEncoding.Name(value)
    except ValueError:
        return str(value)


def raw_format(encoding: int, sample_rate: int, channels: int) -> SampleFormat:
    """The format of header-less audio, from a RecognitionConfig's fields."""
    codec = {ra.ENCODING_UNSPECIFIED: "pcm", ra.LINEAR_PCM: "pcm", ra.MULAW: "mulaw",
             ra.ALAW: "alaw"}.get(encoding)
    if codec is None:
        raise AudioError(
            f"audio encoding {encoding_name(encoding)} is not supported; send LINEAR_PCM "
            "(16-bit), MULAW or ALAW, or a WAV file (its header is read)")
    if sample_rate <= 0:
        raise AudioError("sample_rate_hertz is not set and the audio has no WAV header; "
                         "set sample_rate_hertz to the audio's rate or send a WAV file")
    return SampleFormat(codec, 2 if codec == "pcm" else 1, channels or 1, sample_rate)


def parse_wav_header(buf: bytes) -> tuple[SampleFormat, int, int | None] | None:
    """(format, offset of the samples, their byte count or None if unknown) from the
    start of a WAV file; None while `buf` is too short to hold the whole header."""
    if len(buf) < 12:
        return None
    if buf[8:12] != b"WAVE":
        raise AudioError("the audio starts with RIFF but is not a WAVE file; send a WAV "
                         "file or raw LINEAR_PCM / MULAW / ALAW samples")
    pos, fmt = 12, None
    while pos + 8 <= len(buf):
        chunk_id, size = buf[pos:pos + 4], struct.unpack_from("<I", buf, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise AudioError("WAV file has its data before its 'fmt ' chunk")
            return fmt, body, None if size in _UNKNOWN_SIZES else size
        if body + size > len(buf):
            if body + size > _MAX_HEADER:
                raise AudioError(f"WAV header chunk '{chunk_id.decode(errors='replace')}' "
                                 f"of {size} bytes is too long; strip metadata chunks")
            return None
        if chunk_id == b"fmt ":
            fmt = _wav_format(buf[body:body + size])
        pos = body + size + (size & 1)  # chunks are padded to an even length
    if len(buf) > _MAX_HEADER:
        raise AudioError("no 'data' chunk in the first 64 KiB of the WAV file")
    return None


def _wav_format(fmt: bytes) -> SampleFormat:
    if len(fmt) < 16:
        raise AudioError("WAV 'fmt ' chunk is shorter than 16 bytes")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first bytes of the sub-format GUID
    codec = _WAVE_TAGS.get(tag)
    if codec is None:
        raise AudioError(f"WAV format tag {tag:#x} is not supported; send PCM, IEEE float, "
                         "μ-law or A-law WAV")
    return SampleFormat(codec, max(1, (bits + 7) // 8), channels, rate)


def to_float(data: bytes, fmt: SampleFormat) -> np.ndarray:
    """Whole frames of `fmt` -> float32 samples of the first channel."""
    if not data:
        return np.zeros(0, np.float32)
    frames = np.frombuffer(data, dtype=np.uint8).reshape(-1, fmt.frame_bytes)
    first = np.ascontiguousarray(frames[:, :fmt.width])
    if fmt.codec in ("mulaw", "alaw"):
        return decode_codec(first.tobytes(), Encoding.MULAW if fmt.codec == "mulaw"
                           else Encoding.ALAW)
    if fmt.codec == "float":
        return first.view("<f4" if fmt.width == 4 else "<f8").ravel().astype(np.float32)
    if fmt.width == 1:  # 8-bit WAV is unsigned
        return (first.ravel().astype(np.float32) - 128.0) / 128.0
    if fmt.width == 3:  # little-endian 24-bit: widen to 32 bits, the sign comes along
        wide = np.zeros((len(first), 4), np.uint8)
        wide[:, 1:] = first
        return wide.view("<i4").ravel().astype(np.float32) / 2.0**31
    dtype = {2: "<i2", 4: "<i4"}[fmt.width]
    return first.view(dtype).ravel().astype(np.float32) / float(2 ** (8 * fmt.width - 1))


class AudioDecoder:
    """Incremental: bytes of a request (or of a stream's chunks, in order) -> 16 kHz
    float32. The header, when there is one, may be split across chunks."""

    def __init__(self, encoding: int, sample_rate: int, channels: int) -> None:
        self._config = (encoding, sample_rate, channels)
        self.format: SampleFormat | None = None
        self.from_header = False
        self._buf = b""  # header bytes not yet parsed, then a partial frame
        self._left: int | None = None  # sample bytes still expected (WAV with a length)
        self._resampler: soxr.ResampleStream | None = None
        self.input_seconds = 0.0

    def push(self, data: bytes) -> np.ndarray:
        self._buf += data
        if self.format is None and not self._detect():
            return np.zeros(0, np.float32)
        assert self.format is not None
        data, self._buf = self._buf, b""
        if self._left is not None:
            data = data[:self._left]  # what follows the samples is metadata
        whole = len(data) - len(data) % self.format.frame_bytes
        data, self._buf = data[:whole], data[whole:]
        if self._left is not None:
            self._left -= whole
        samples = to_float(data, self.format)
        self.input_seconds += len(samples) / self.format.rate
        return self._resample(samples, last=False)

    def flush(self) -> np.ndarray:
        """The resampler's tail at the end of the audio."""
        if self.format is None:
            if not self._buf:
                return np.zeros(0, np.float32)
            if self._buf.startswith(b"RIFF"):
                raise AudioError(f"the audio ends after {len(self._buf)} bytes, inside its "
                                 "WAV header")
            self._use_raw()  # a few bytes that only looked like the start of a header
            head = self.push(b"")
            return np.concatenate([head, self._resample(np.zeros(0, np.float32), last=True)])
        return self._resample(np.zeros(0, np.float32), last=True)

    def _detect(self) -> bool:
        head = self._buf[:4]
        if len(head) < 4 and any(m.startswith(head) for m in _MAGICS):
            return False  # could still be a header: wait for more bytes
        if head == b"RIFF":
            parsed = parse_wav_header(self._buf)
            if parsed is None:
                return False
            fmt, offset, self._left = parsed
            self._set_format(fmt)
            self.from_header = True
            self._buf = self._buf[offset:]
        elif head in (b"fLaC", b"OggS"):
            kind = "FLAC" if head == b"fLaC" else "Ogg"
            raise AudioError(f"the audio is {kind}, which is not supported; send WAV, or "
                             "raw LINEAR_PCM, MULAW or ALAW with encoding and "
                             "sample_rate_hertz set")
        else:
            self._use_raw()
        return True

    def _use_raw(self) -> None:
        self._set_format(raw_format(*self._config))

    def _set_format(self, fmt: SampleFormat) -> None:
        self.format = fmt
        if fmt.rate != ENGINE_RATE:
            # Medium quality: little filter delay, which adds to the end-of-turn decision.
            self._resampler = soxr.ResampleStream(fmt.rate, ENGINE_RATE, 1,
                                                  dtype="float32", quality="MQ")

    def _resample(self, samples: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return samples.astype(np.float32, copy=False)
        return self._resampler.resample_chunk(samples, last=last)


def decode_all(data: bytes, encoding: int, sample_rate: int, channels: int
               ) -> tuple[np.ndarray, AudioDecoder]:
    """A whole request's audio at 16 kHz."""
    decoder = AudioDecoder(encoding, sample_rate, channels)
    audio = np.concatenate([decoder.push(data), decoder.flush()])
    return audio, decoder


def output_encoding(encoding: int) -> Encoding:
    """The codec of synthesised audio for a SynthesizeSpeechRequest's encoding."""
    if encoding in (ra.ENCODING_UNSPECIFIED, ra.LINEAR_PCM):
        return Encoding.PCM16
    if encoding == ra.MULAW:
        return Encoding.MULAW
    if encoding == ra.ALAW:
        return Encoding.ALAW
    raise AudioError(f"output encoding {encoding_name(encoding)} is not supported; ask for "
                     "LINEAR_PCM (16-bit), MULAW or ALAW")


class AudioEncoder:
    """TTS audio (float32 at the voice's rate) -> bytes at the requested rate and codec,
    streamed: the resampler keeps its state between chunks."""

    def __init__(self, source_rate: int, rate: int, encoding: Encoding) -> None:
        self.rate, self.encoding = rate, encoding
        self._resampler = None if rate == source_rate else soxr.ResampleStream(
            source_rate, rate, 1, dtype="float32", quality="HQ")

    def push(self, samples: np.ndarray, last: bool = False) -> bytes:
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples.astype(np.float32), last=last)
        return encode_codec(samples, self.encoding) if len(samples) else b""
