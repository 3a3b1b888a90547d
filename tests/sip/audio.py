"""What the SIP tests do with the audio a real client heard: find where someone spoke
(20 ms frames over a level), and keep only those stretches for transcription, so that
the silences between turns neither mislead tiny.en nor push it past its 30 s window."""

from __future__ import annotations

import numpy as np
import soxr

FRAME_S = 0.02
LEVEL = 300  # int16 RMS of a 20 ms frame that counts as speech (G.711 silence is ~0)


def voiced_frames(pcm: np.ndarray, rate: int) -> np.ndarray:
    """A bool per 20 ms frame of int16 audio: speech or not."""
    size = int(rate * FRAME_S)
    frames = pcm[: len(pcm) // size * size].astype(np.float32).reshape(-1, size)
    return np.sqrt(np.mean(frames**2, axis=1)) > LEVEL if len(frames) else np.zeros(0, bool)


def speech_only(pcm: np.ndarray, rate: int, pad_s: float = 0.3,
                gap_s: float = 0.4) -> np.ndarray:
    """The spoken stretches of int16 audio (padded by `pad_s`), `gap_s` of silence between
    them, as float32 at 16 kHz for the STT engine."""
    voiced = voiced_frames(pcm, rate)
    pad = int(pad_s / FRAME_S)
    keep = np.convolve(voiced, np.ones(2 * pad + 1), "same") > 0 if len(voiced) else voiced
    size = int(rate * FRAME_S)
    pieces, start = [], None
    for i, on in enumerate([*keep, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            pieces += [pcm[start * size:i * size], np.zeros(int(rate * gap_s), np.int16)]
            start = None
    audio = (np.concatenate(pieces) if pieces else np.zeros(0, np.int16)).astype(np.float32)
    return soxr.resample(audio / 32768.0, rate, 16000).astype(np.float32)
