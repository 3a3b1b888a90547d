"""Streaming rational resampling for many calls at once: one polyphase windowed-sinc
filter applied to a batch of streams [B, samples], each carrying its own history, so
consecutive frames join without clicks. The same code runs on CPU and GPU."""

from __future__ import annotations

from math import gcd

import torch


class Resampler:
    def __init__(self, in_rate: int, out_rate: int, taps_per_phase: int = 32,
                 device: str = "cpu") -> None:
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self.in_rate, self.out_rate = in_rate, out_rate
        self.device = torch.device(device)
        self.taps = taps_per_phase
        # Low-pass at the lower of the two Nyquist rates (95% of it, so the Kaiser
        # transition band stays below it), designed at the upsampled rate.
        n = taps_per_phase * self.up
        cutoff = 0.95 / max(self.up, self.down)
        t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        h = cutoff * torch.special.sinc(cutoff * t) * torch.kaiser_window(
            n, periodic=False, beta=8.6, dtype=torch.float64)
        h = h * self.up / h.sum()
        # Phase p of output sample k uses taps h[p + up * j] against input x[base - j].
        self._phases = h.reshape(taps_per_phase, self.up).T.flip(1).float().to(self.device)
        self.delay_s = (n - 1) / 2 / (in_rate * self.up)

    def new_history(self, streams: int) -> torch.Tensor:
        return torch.zeros(streams, self.taps - 1, device=self.device)

    def out_len(self, in_len: int) -> int:
        if (in_len * self.up) % self.down:
            raise ValueError(f"a frame of {in_len} samples at {self.in_rate} Hz does not map "
                             f"to whole samples at {self.out_rate} Hz")
        return in_len * self.up // self.down

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, history: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S] -> (y [B, S * out / in], history for the next frame)."""
        x = x.to(self.device, torch.float32)
        n_out = self.out_len(x.shape[1])
        padded = torch.cat([history, x], dim=1)
        k = torch.arange(n_out, device=self.device)
        pos = k * self.down
        base = pos // self.up + self.taps - 1  # index of the newest input sample used
        phase = pos % self.up
        idx = base[:, None] - torch.arange(self.taps - 1, -1, -1, device=self.device)
        windows = padded[:, idx]  # [B, n_out, taps], oldest sample first
        y = (windows * self._phases[phase]).sum(-1)
        return y, padded[:, -(self.taps - 1):]
