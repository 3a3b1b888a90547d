"""Whisper's log-mel features for a batch of utterances at once, on CPU or GPU.

Matches faster-whisper's numpy FeatureExtractor (same mel filters, periodic Hann window,
centred reflect-padded STFT, log10 floor at max - 8 dB per utterance) to float32
rounding; tests/test_kernels.py checks it against that extractor.
"""

from __future__ import annotations

import torch
from faster_whisper.feature_extractor import FeatureExtractor

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160


class LogMel:
    def __init__(self, n_mels: int = 80, device: str = "cpu") -> None:
        self.device = torch.device(device)
        filters = FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels)
        self._filters = torch.as_tensor(filters, dtype=torch.float32, device=self.device)
        self._window = torch.hann_window(N_FFT, periodic=True, device=self.device)

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, samples] float32 at 16 kHz -> features [B, n_mels, samples // 160]."""
        audio = audio.to(self.device, torch.float32)
        spec = torch.stft(audio, N_FFT, HOP, window=self._window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec[..., :-1].abs() ** 2
        mel = self._filters @ power
        log = torch.clamp(mel, min=1e-10).log10()
        floor = log.amax(dim=(1, 2), keepdim=True) - 8.0
        return (torch.maximum(log, floor) + 4.0) / 4.0
