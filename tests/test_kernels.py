"""The torch kernels against references: faster-whisper's own log-mel extractor, and
pure tones through the resampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from tests.conftest import DATA
from voxline.client.gateway import load_recording
from voxline.kernels.logmel import LogMel
from voxline.kernels.resample import Resampler


def test_logmel_matches_faster_whisper_for_a_batch():
    files = ["read_misc/vosk_test_8k.wav", "asterisk_8k/wav/activated.wav",
             "fsdd_8k/3_theo_0.wav"]
    audios = [load_recording(DATA / f, 16000) for f in files]
    n = 16000 * 10
    batch = np.stack([np.pad(a[:n], (0, n - len(a[:n]))) for a in audios])
    got = LogMel()(torch.from_numpy(batch)).numpy()
    ref = FeatureExtractor()
    assert got.shape == (3, 80, 1000)
    for i, x in enumerate(batch):
        expected = ref(x, padding=0)
        assert expected.shape == got[i].shape
        assert np.abs(expected - got[i]).max() < 1e-4


def _tone_fit(y: np.ndarray, freq: float, rate: int) -> tuple[float, float]:
    """SNR (dB) of y against the best-fitting sine of `freq`, and that sine's amplitude."""
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], 1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    return 10 * np.log10(fit.var() / (y - fit).var()), float(np.hypot(*coef))


@pytest.mark.parametrize(("src", "dst", "freq"),
                         [(8000, 16000, 1000), (16000, 8000, 1000), (22050, 8000, 1500),
                          (48000, 16000, 440)])
def test_resampler_keeps_a_tone_and_streams_seamlessly(src, dst, freq):
    x = torch.sin(2 * np.pi * freq * torch.arange(src) / src)
    x = torch.stack([x, 0.5 * x])  # two calls in one batch
    r = Resampler(src, dst)
    whole, _ = r(x, r.new_history(2))
    assert whole.shape == (2, dst)
    snr, amp = _tone_fit(whole[0, 200:].double().numpy(), freq, dst)
    assert snr > 60 and abs(amp - 1) < 0.01, (snr, amp)
    assert abs(_tone_fit(whole[1, 200:].double().numpy(), freq, dst)[1] - 0.5) < 0.01
    # 20 ms frames with carried history give exactly the one-shot result
    frame, hist, parts = src // 50, r.new_history(2), []
    for i in range(0, src, frame):
        y, hist = r(x[:, i:i + frame], hist)
        parts.append(y)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5)


def test_resampler_rejects_what_aliases_and_odd_frames():
    r = Resampler(16000, 8000)
    tone = torch.sin(2 * np.pi * 6000 * torch.arange(16000) / 16000)[None]
    y, _ = r(tone, r.new_history(1))  # 6 kHz cannot exist at 8 kHz: filtered out
    assert 20 * np.log10(y[0, 200:].std().item() / 0.707) < -60
    with pytest.raises(ValueError, match="whole samples"):
        Resampler(22050, 8000)(torch.zeros(1, 100), Resampler(22050, 8000).new_history(1))
