"""Deterministic stand-in values for a KV cache: the same numbers on every device.

A long prefill is too slow (or too big for the eager path) to run before each decode
case, so caches are filled with unit-variance values instead. They come from hashing each
element's index, which makes them identical on CPU and GPU and independent of the order
or chunking in which they are made.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# random_fill: counter-based values, the same on every device. Each element's 64-bit index is
# hashed with 32-bit integer mixing done in int64 arithmetic; every product stays below 2**63
# (a value < 2**32 times a constant < 2**31), so no step overflows on any device.
_MIX = (0x7FEB352D, 0x6C8E9CF5, 0x4C957F2D)
_U24 = float(2**-24)
RANDOM_FILL_CHUNK = 1 << 22  # elements per chunk: ~100 MiB of int64 temporaries at most


def _mix32(x: Tensor, mult: int) -> Tensor:
    x = x ^ (x >> 16)
    x = (x * mult) & 0xFFFFFFFF
    return x ^ (x >> 15)


def random_fill(out: Tensor, seed: int, stream: int = 0, first_index: int = 0,
                chunk: int = RANDOM_FILL_CHUNK) -> None:
    """Fill the contiguous 1-D `out` with uniform values of variance 1 in [-sqrt(3), sqrt(3)),
    element i a hash of (seed, stream, first_index + i): deterministic, identical on CPU and
    GPU (integer hashing, then float32 operations that round exactly the same everywhere),
    computed `chunk` elements at a time on out's device and written in out's dtype."""
    if out.dim() != 1 or not out.is_contiguous():
        raise ValueError("random_fill writes a contiguous 1-D tensor")
    key = (seed * 0x9E3779B1 + stream * 0x85EBCA77 + 0x5BD1E995) & 0xFFFFFFFF  # no fixed point at 0
    scale = 2.0 * math.sqrt(3.0) * _U24
    for start in range(0, out.numel(), chunk):
        n = min(chunk, out.numel() - start)
        idx = torch.arange(first_index + start, first_index + start + n, dtype=torch.int64, device=out.device)
        hi = _mix32((idx >> 32) ^ key, _MIX[0])
        x = _mix32((idx & 0xFFFFFFFF) ^ hi, _MIX[1])
        x = _mix32(x ^ key, _MIX[2])
        u = (x >> 8).to(torch.float32)  # 24 random bits: exact in float32
        del idx, hi, x
        out[start:start + n].copy_(u.mul_(scale).sub_(math.sqrt(3.0)))  # one rounding to out's dtype
