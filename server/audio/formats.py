"""The audio formats a call may use, and the checks on caller frames."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ENGINE_RATE = 16000  # VAD and Whisper run at 16 kHz mono
SUPPORTED_RATES = (8000, 16000)


class Encoding(StrEnum):
    PCM16 = "pcm16"
    MULAW = "mulaw"
    ALAW = "alaw"

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is Encoding.PCM16 else 1


class AudioFormatError(ValueError):
    """The caller's audio cannot be used as sent; the message says how to fix it."""


@dataclass(frozen=True)
class CallAudioFormat:
    encoding: Encoding
    sample_rate: int

    def __post_init__(self) -> None:
        if self.sample_rate not in SUPPORTED_RATES:
            raise AudioFormatError(
                f"unsupported sample rate {self.sample_rate} Hz; use 8000 or 16000"
            )

    def bytes_for_ms(self, ms: float) -> int:
        return int(self.sample_rate * ms / 1000) * self.encoding.bytes_per_sample

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes / self.encoding.bytes_per_sample * 1000 / self.sample_rate

    def check_frame(self, n_bytes: int, max_frame_ms: int) -> None:
        if n_bytes == 0:
            raise AudioFormatError("empty audio chunk; send at least 10 ms of audio")
        if self.encoding is Encoding.PCM16 and n_bytes % 2:
            raise AudioFormatError(
                f"PCM16 audio chunk has an odd number of bytes ({n_bytes}); "
                "each sample takes 2 bytes"
            )
        if self.duration_ms(n_bytes) > max_frame_ms:
            raise AudioFormatError(
                f"audio chunk of {n_bytes} bytes is {self.duration_ms(n_bytes):.0f} ms of "
                f"{self.encoding.value} at {self.sample_rate} Hz; frames may be at most "
                f"{max_frame_ms} ms"
            )
