"""Bytes in the call's codec <-> float32 audio at the engines' rate.

A call's frames are a few hundred bytes each, 50 a second: too small for a torch
dispatch per frame to pay. So each codec is a lookup table (256 codes in, 65,536
samples out), filled once from the torch kernels (kernels/g711.py), which stay the
definition and batch whole files; the tables match them exactly (a test checks).
Resampling keeps state between frames (soxr streams), one stream per direction per
call.
"""

from __future__ import annotations

import functools

import numpy as np
import soxr
import torch

from voxline.audio.formats import ENGINE_RATE, CallAudioFormat, Encoding
from voxline.kernels import g711


@functools.cache
def _decode_table(encoding: Encoding) -> np.ndarray:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    return g711.decode(codes, encoding.value).numpy().astype(np.float32) / 32768.0


@functools.cache
def _encode_table(encoding: Encoding) -> np.ndarray:
    pcm = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    return g711.encode(pcm, encoding.value).numpy().astype(np.uint8)


def decode(payload: bytes, encoding: Encoding) -> np.ndarray:
    """Codec bytes -> float32 samples in [-1, 1]."""
    if encoding is Encoding.PCM16:
        return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    return _decode_table(encoding)[np.frombuffer(payload, dtype=np.uint8)]


def encode(samples: np.ndarray, encoding: Encoding) -> bytes:
    """float32 samples in [-1, 1] -> codec bytes."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    if encoding is Encoding.PCM16:
        return pcm.tobytes()
    return _encode_table(encoding)[pcm.astype(np.int32) + 32768].tobytes()


class _Resampler:
    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._stream = (
            None if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=last)


class InboundAudio:
    """Decodes a call's frames and resamples them to 16 kHz."""

    def __init__(self, fmt: CallAudioFormat) -> None:
        self.format = fmt
        # Medium quality: 26 ms of filter delay instead of 66 ms, and every millisecond
        # of delay on the way in is added to the end-of-turn decision.
        self._resample = _Resampler(fmt.sample_rate, ENGINE_RATE, "MQ")

    def __call__(self, payload: bytes) -> np.ndarray:
        return self._resample(decode(payload, self.format.encoding))


class OutboundAudio:
    """Resamples one agent turn's TTS audio to the call's rate and cuts it into
    fixed-size encoded chunks."""

    def __init__(self, fmt: CallAudioFormat, source_rate: int, chunk_ms: int) -> None:
        self.format = fmt
        self._resample = _Resampler(source_rate, fmt.sample_rate, "HQ")
        self._chunk = fmt.sample_rate * chunk_ms // 1000
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray, last: bool = False) -> list[bytes]:
        """Add TTS samples (float32 at the source rate); returns the full chunks ready."""
        self._pending = np.concatenate([self._pending, self._resample(samples, last=last)])
        n_full = len(self._pending) // self._chunk
        if last and len(self._pending) % self._chunk:
            n_full += 1
        out = [
            encode(self._pending[i * self._chunk:(i + 1) * self._chunk], self.format.encoding)
            for i in range(n_full)
        ]
        self._pending = self._pending[n_full * self._chunk:]
        return out

    @property
    def pending_ms(self) -> float:
        """Audio pushed but not yet cut into a chunk."""
        return len(self._pending) * 1000 / self.format.sample_rate

    def chunk_ms(self, chunk: bytes) -> float:
        return self.format.duration_ms(len(chunk))
