"""Rotary position embeddings, both conventions, with DeepSeek's YaRN frequency correction.

- rotate-half (Llama / HF checkpoints): dims (i, i + D/2) form a pair.
- interleaved pairs (DeepSeek MLA): dims (2i, 2i + 1) form a pair, rotated as a
  complex number by angle pos * theta^(-2i/d).

Tables are computed in float64 and rotations run in at least float32, so the
bf16 paths lose nothing here and the float64 reference stays exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlabench.config import AttentionShape


def _yarn_correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    return dim * math.log(max_pos / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def inv_frequencies(dim: int, shape: AttentionShape) -> Tensor:
    """theta^(-2i/dim) for i < dim/2 (float64, CPU), YaRN-corrected whenever the shape has
    YaRN (rope_scaling_factor > 1).

    The correction depends on the shape alone, never on a case's cache or sequence
    length: a YaRN model is one function at every length, its corrected frequencies
    always paired with the mscale^2 softmax factor (`AttentionShape.mla_softmax_scale`),
    as HF transformers' DeepseekV3Attention runs it (docs/variants.md §8).
    """
    base = shape.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (dim/2,)
    factor = shape.rope_scaling_factor
    if factor > 1.0:
        orig = shape.rope_original_max_position
        low = math.floor(_yarn_correction_dim(shape.rope_beta_fast, dim, base, orig))
        high = math.ceil(_yarn_correction_dim(shape.rope_beta_slow, dim, base, orig))
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        smooth = 1 - ramp
        freqs = freqs / factor * (1 - smooth) + freqs * smooth
    return freqs


def rope_table(dim: int, shape: AttentionShape, max_positions: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(cos, sin) for positions 0 .. max_positions-1, each (max_positions, dim/2), float64.
    Row p is the same for every max_positions: the length only sizes the table."""
    freqs = inv_frequencies(dim, shape)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), freqs)
    return angles.cos().to(device), angles.sin().to(device)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_token(table: Tensor, x_dim: int) -> Tensor:
    """cos/sin rows (S, n) or (B, S, n) shaped to broadcast over x (B, S, [H,] n...)."""
    if table.dim() == 2:
        table = table[None]  # (1, S, n)
    return table.view(table.shape[0], table.shape[1], *(1,) * (x_dim - 3), table.shape[2])


def apply_rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, S, H, D); cos/sin (S, D/2), or (B, S, D/2) per sequence (ragged). Llama convention."""
    dt = _compute_dtype(x)
    xf = x.to(dt)
    c = _per_token(cos.to(dt), x.dim())  # (1 or B, S, 1, D/2)
    s = _per_token(sin.to(dt), x.dim())
    x1, x2 = xf.chunk(2, dim=-1)
    out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return out.to(x.dtype)


def apply_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, S, H, d_r) or (B, S, d_r); cos/sin (S, d_r/2), or (B, S, d_r/2) per sequence
    (ragged). DeepSeek convention."""
    dt = _compute_dtype(x)
    xf = x.to(dt).unflatten(-1, (-1, 2))  # (..., d_r/2, 2)
    c, s = _per_token(cos.to(dt), x.dim()), _per_token(sin.to(dt), x.dim())
    even, odd = xf[..., 0], xf[..., 1]
    out = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2)
    return out.to(x.dtype)
