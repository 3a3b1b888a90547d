"""G.711 mu-law and A-law codecs over tensors of any shape (calls x samples).

Decoding is a 256-entry table lookup. Encoding maps each 16-bit sample to the code of
the nearest G.711 level through a 65,536-entry table built once from the decode table,
so encode(decode(code)) == code for every code (mu-law's two zeros aside).
"""

from __future__ import annotations

from functools import cache

import torch


def _mulaw_levels() -> torch.Tensor:
    u = ~torch.arange(256, dtype=torch.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return torch.where(u & 0x80 != 0, -magnitude, magnitude).to(torch.int16)


def _alaw_levels() -> torch.Tensor:
    a = torch.arange(256, dtype=torch.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = torch.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << (exponent - 1).clamp(min=0),
    )
    return torch.where(a & 0x80 != 0, magnitude, -magnitude).to(torch.int16)


_LEVELS = {"mulaw": _mulaw_levels, "alaw": _alaw_levels}


@cache
def decode_table(law: str, device: str = "cpu") -> torch.Tensor:
    """int16 value of each of the 256 codes."""
    return _LEVELS[law]().to(device)


@cache
def encode_table(law: str, device: str = "cpu") -> torch.Tensor:
    """uint8 code of the nearest level for each int16 value (index = value + 32768)."""
    levels = decode_table(law).to(torch.int32)
    order = torch.argsort(levels)
    sorted_levels = levels[order]
    values = torch.arange(-32768, 32768, dtype=torch.int32)
    hi = torch.searchsorted(sorted_levels, values).clamp(max=255)
    lo = (hi - 1).clamp(min=0)
    nearer_lo = (values - sorted_levels[lo]).abs() <= (sorted_levels[hi] - values).abs()
    idx = torch.where(nearer_lo, lo, hi)
    return order[idx].to(torch.uint8).to(device)


def decode(codes: torch.Tensor, law: str) -> torch.Tensor:
    """uint8 codes -> int16 samples, same shape."""
    return decode_table(law, str(codes.device))[codes.long()]


def encode(samples: torch.Tensor, law: str) -> torch.Tensor:
    """int16 samples -> uint8 codes, same shape."""
    return encode_table(law, str(samples.device))[samples.long() + 32768]
