"""The attention cores in plain PyTorch: the eager softmax(q k^T) v, its chunked form, the masks.

The core contract, shared by every variant and backend:
    core(q, k, v, scale, causal) -> o
    q (B, S, Hq, Dk), k (B, T, Hkv, Dk), v (B, T, Hkv, Dv), Hq % Hkv == 0,
    query head h reads KV head h // (Hq / Hkv); o (B, S, Hq, Dv) in q's dtype.
    `causal` is a bool (bottom-right causal or none) or a (B, S, T) bool tensor, True where
    query s may see key t (DeepSeek Sparse Attention's index mask, causality included).
A ragged batch adds `lengths` (B,): keys past a sequence's length are masked out.

`eager_attention` is every variant's default core and, in float64, the reference every
other path is checked against.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class CoreAttention(Protocol):
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor) -> Tensor: ...


def causal_mask(s: int, t: int, device: torch.device) -> Tensor:
    """(S, T) bool, True where query s (absolute position t-s+..) may see key t: bottom-right aligned."""
    q_pos = torch.arange(t - s, t, device=device)[:, None]
    k_pos = torch.arange(t, device=device)[None, :]
    return k_pos <= q_pos


def ragged_mask(lengths: Tensor, s: int, t: int, causal: bool) -> Tensor:
    """(B, S, T) bool for a ragged batch: sequence b holds lengths[b] tokens, its S new queries
    the last S of them; a query sees keys < lengths[b] (and, causal, none after itself)."""
    k_pos = torch.arange(t, device=lengths.device)[None, None, :]  # (1, 1, T)
    if causal:
        q_pos = lengths[:, None] - s + torch.arange(s, device=lengths.device)[None, :]  # (B, S)
        return k_pos <= q_pos[:, :, None]
    return k_pos < lengths[:, None, None]


def eager_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                    lengths: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) v in plain PyTorch; softmax in fp32 (fp64 for fp64 inputs).
    `causal` as a (B, S, T) bool tensor is the mask itself (True: visible).
    `lengths` (B,): a ragged batch, keys past a sequence's length masked out."""
    b, s, hq, dk = q.shape
    t, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.view(b, s, hkv, groups, dk)  # (B, S, G, H/G, Dk): no copy of K/V for GQA
    scores = torch.einsum("bsgnd,btgd->bgnst", qg, k).to(acc) * scale  # (B, G, H/G, S, T)
    if isinstance(causal, Tensor):
        mask = causal if lengths is None else causal & ragged_mask(lengths, s, t, False)
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    elif lengths is not None:
        mask = ragged_mask(lengths, s, t, causal)[:, None, None]  # (B, 1, 1, S, T)
        # Masked keys get probability exactly 0: the slack past a sequence's end (finite: caches
        # are allocated zeroed) adds nothing, and is not copied out of V on every step.
        scores = scores.masked_fill(~mask, float("-inf"))
    elif causal and s > 1:
        scores = scores.masked_fill(~causal_mask(s, t, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.einsum("bgnst,btgd->bsgnd", probs, v)  # (B, S, G, H/G, Dv)
    return out.reshape(b, s, hq, v.shape[-1])


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                      lengths: Tensor | None = None, max_scores: int = 2**26) -> Tensor:
    """`eager_attention` over blocks of queries so the score matrix stays under `max_scores`
    elements: the float64 reference of a long prefill must not need the full (S, T) scores."""
    b, s, h = q.shape[:3]
    t = k.shape[1]
    chunk = max(1, max_scores // max(1, b * h * t))
    if chunk >= s:
        return eager_attention(q, k, v, scale, causal, lengths)
    if lengths is not None:  # decode steps are short: ragged batches never need chunks
        raise ValueError("chunked_attention: a ragged batch of long query blocks is not supported")
    outs = []
    for start in range(0, s, chunk):
        end = min(s, start + chunk)
        keys = t - s + end if causal is True else t  # the block's last query sees keys up to here
        block_mask = causal[:, start:end] if isinstance(causal, Tensor) else causal
        outs.append(eager_attention(q[:, start:end], k[:, :keys], v[:, :keys], scale, block_mask))
    return torch.cat(outs, dim=1)
