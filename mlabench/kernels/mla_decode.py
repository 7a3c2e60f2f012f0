"""Fused Multi-head Latent Attention (MLA) decode in Triton, absorbed ("MQA mode") form.

Computes, for every sequence b, new query token s and head h,

    o[b, s, h] = softmax_t((q[b, s, h] . kv[b, t]) * softmax_scale) @ kv[b, t, :head_dim_v]

over the keys t <= cache_seqlens[b] - S + s (causal, bottom-right aligned). All H query
heads share ONE latent KV head whose first ``head_dim_v`` columns (the compressed latent
c_kv) double as the values, so V is read from the same tile as K and never copied. This is
the interface of DeepSeek's FlashMLA (D = 576 = 512 latent + 64 RoPE, dv = 512). The
math (docs/variants.md §3, the absorbed form) and the design are in NOTES.md beside this file;
launch defaults, argument checks and the split heuristic are in ``mla_decode_launch.py``, the
Triton kernels themselves in ``mla_decode_kernels.py``.

FP8 cache (``kv_dtype``): the cache is DeepSeek's FP8 latent layout, a uint8 tensor of rows
[d_c FP8 | one fp32 scale per 128 latent values | d_r bf16] (``variants/kvquant.py``); the
split kernel loads the FP8 bytes, converts them in registers, multiplies each 128-column tile
by its scale, and rounds the result to q's dtype for the MMAs (exact: an FP8 value times a
power of two fits bf16). Scales and RoPE values are read through float32 and bf16 views of
the same storage, so nothing is copied.

Grouped Latent Attention (``latent_heads`` G > 1) runs on the same kernels: each cache row is
[c_1 .. c_G, k_pe] (G latent heads of width ``head_dim_v``, then one shared RoPE key), query
head h reads latent head h // (H/G), and the latent head is a grid axis whose programs read
their own columns of the one cache, never a copy. G = 1 is MLA. An FP8 cache has one latent
head (DeepSeek's layout); the launcher refuses FP8 with G > 1.

Sparse mode (DeepSeek Sparse Attention, the ``SPARSE`` constexpr; the dense path compiles
as before): ``indices`` (B, S, K) int32 names, per query token, the cache rows it attends
(-1 = none). A row block then holds heads of ONE query token, the splits cut the K index
slots instead of the sequence, and each KV tile is gathered row by row from the cache.

The module imports without triton; ``mla_decode`` then raises ``RuntimeError``.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor

from mlabench.kernels.mla_decode_kernels import HAS_TRITON, INTERPRETED
from mlabench.kernels.mla_decode_launch import LaunchConfig, LaunchKnobs, check_inputs, mla_decode_config

if HAS_TRITON:
    import triton

    from mlabench.kernels.mla_decode_kernels import _mla_decode_combine_kernel, _mla_decode_split_kernel

__all__ = ["HAS_TRITON", "LaunchConfig", "mla_decode", "mla_decode_config", "triton_unavailable_reason"]

_LOG2E = 1.4426950408889634
# CUDA caps gridDim.x at 2^31 - 1; the split kernel's grid is one-dimensional.
_MAX_GRID = 2**31 - 1
# FP8 cache formats -> the split kernel's KV_FP8 code; latent columns per scale.
FP8_CODES = {"fp8_e4m3": 1, "fp8_e5m2": 2}
_SCALE_TILE = 128


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None if the kernel can run on ``device`` here; else one short reason."""
    if not HAS_TRITON:
        return "triton is not installed"
    device = torch.device(device)
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        # triton.jit picks compiled vs interpreted when this module is imported, so what
        # counts is TRITON_INTERPRET at import time, not the environment now.
        return None if INTERPRETED else "needs a CUDA device or TRITON_INTERPRET=1 (set before import)"
    return f"unsupported device type {device.type!r}"


def mla_decode(
    q: Tensor,
    kv_cache: Tensor,
    cache_seqlens: Tensor,
    head_dim_v: int,
    softmax_scale: float,
    num_splits: int | None = None,
    *,
    block_table: Tensor | None = None,
    kv_dtype: str = "",
    latent_heads: int = 1,
    indices: Tensor | None = None,
    **knobs: Unpack[LaunchKnobs],
) -> Tensor:
    """Absorbed-MLA decode attention with split-KV; returns ``[B, S, H, head_dim_v]`` in q's dtype.

    q: (B, S, H, D) queries in the absorbed space, D = d_c + d_r.
    kv_cache: (B, T_max, D), one KV head; V = kv_cache[..., :head_dim_v]. May be a strided view,
        but the last dim must have stride 1.
        With ``block_table``: a page pool (num_pages, page_size, D) instead.
    cache_seqlens: (B,) int32 valid tokens per sequence, including the S new ones.
    softmax_scale: multiplies q . k; always explicit (DeepSeek: d_qk**-0.5 times the YaRN factor).
    num_splits and ``knobs`` (block_h, block_n, num_warps, num_stages): launch knobs; None picks the
        default (``mla_decode_config`` returns the resulting configuration; NOTES.md explains it).
    block_table: (B, max pages) int32 page ids of a paged cache: token p of sequence b is
        kv_cache[block_table[b, p // page_size], p % page_size]. None: kv_cache is contiguous.
    kv_dtype: "" for a cache in q's dtype; "fp8_e4m3" or "fp8_e5m2" for a uint8 cache (B, T_max,
        row bytes) of DeepSeek FP8 rows [head_dim_v FP8 | fp32 scale per 128 | D - head_dim_v bf16]
        (with ``block_table``, a pool of such rows).
    latent_heads: G > 1 for Grouped Latent Attention: kv_cache rows are [c_1 .. c_G, k_pe], each
        c_j head_dim_v wide, and query head h attends over c_{h // (H/G)} and the shared k_pe.
    indices: optional (B, S, K) int32, the cache rows each query token attends (-1 = none):
        DeepSeek Sparse Attention's top-k selection. None: every visible row (dense).
    """
    device = q.device if isinstance(q, Tensor) else torch.device("cpu")
    reason = triton_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"mla_decode cannot run on {device}: {reason}")
    check_inputs(q, kv_cache, cache_seqlens, head_dim_v, softmax_scale, kv_dtype, block_table, latent_heads)
    if indices is not None:
        if indices.dtype != torch.int32 or indices.dim() != 3 or tuple(indices.shape[:2]) != tuple(q.shape[:2]):
            raise ValueError(f"indices must be int32 (B, S, K) for q of shape {tuple(q.shape)}, got "
                             f"{indices.dtype} {tuple(indices.shape)}")
        if indices.device != q.device:
            raise ValueError(f"indices on {indices.device}, q on {q.device}")
        if kv_dtype or latent_heads > 1:
            raise ValueError("indices (sparse decode) read a dense latent of one latent head; "
                             f"got kv_dtype={kv_dtype!r}, latent_heads={latent_heads}")
        if indices.stride(2) != 1:
            indices = indices.contiguous()
    # The launch heuristics size splits by the longest sequence: a pool's is pages * page_size.
    kv_len = None if block_table is None else block_table.shape[1] * kv_cache.shape[1]
    cfg = mla_decode_config(q, kv_cache, num_splits, kv_fp8=bool(kv_dtype), kv_len=kv_len,
                            latent_heads=latent_heads, **knobs)

    B, S, H, D = q.shape
    dv = head_dim_v
    dr = D - dv
    out = torch.empty((B, S, H, dv), dtype=q.dtype, device=q.device)  # (B, S, H, dv)
    if B == 0:
        return out
    if q.stride(3) != 1:
        q = q.contiguous()

    rows = S * H
    sparse = indices is not None
    row_blocks = S * triton.cdiv(H, cfg.block_h) if sparse else triton.cdiv(rows // latent_heads, cfg.block_h)
    num_programs = B * latent_heads * row_blocks * cfg.num_splits
    if num_programs > _MAX_GRID:
        raise ValueError(f"num_splits={cfg.num_splits} gives {num_programs} programs, above the grid limit")

    block_dv = max(16, triton.next_power_of_2(dv))
    block_dr = max(16, triton.next_power_of_2(dr))
    # fp32 inputs: tl.dot would silently use TF32 on NVIDIA GPUs; force IEEE so fp32 stays fp32.
    upcast_dot = INTERPRETED and q.dtype == torch.bfloat16
    precision = "ieee" if q.dtype == torch.float32 or upcast_dot else "tf32"

    fp8 = FP8_CODES.get(kv_dtype, 0)
    if fp8:
        # Views of the same rows: the fp32 scales after the FP8 latent, the bf16 RoPE key after them.
        tiles = triton.cdiv(dv, _SCALE_TILE)
        kv_scale = kv_cache.view(torch.float32)[..., dv // 4: dv // 4 + tiles]  # (B, T, tiles)
        kv_pe = kv_cache.view(torch.bfloat16)[..., (dv + 4 * tiles) // 2:]  # (B, T, d_r)
    else:
        kv_scale = kv_pe = kv_cache  # unused
    write_final = cfg.num_splits == 1
    if write_final:
        # Unused placeholders: the single-split path stores straight into `out`.
        o_part = out.new_empty((1, 1, 1, 1), dtype=torch.float32)
        lse_part = out.new_empty((1, 1, 1), dtype=torch.float32)
    else:
        # Row-major by (row, split) so the combine kernel reads one row's splits contiguously.
        o_part = q.new_empty((B, rows, cfg.num_splits, dv), dtype=torch.float32)  # (B, S*H, NS, dv)
        lse_part = q.new_empty((B, rows, cfg.num_splits), dtype=torch.float32)  # (B, S*H, NS)

    page_size = 0 if block_table is None else kv_cache.shape[1]
    table = cache_seqlens if block_table is None else block_table  # any int32 tensor when unused
    idx = indices if sparse else cache_seqlens  # a placeholder pointer the dense kernel never reads
    _mla_decode_split_kernel[(num_programs,)](
        q, kv_cache, kv_scale, kv_pe, cache_seqlens, o_part, lse_part, out, idx, table,
        q.stride(0), q.stride(1), q.stride(2),
        kv_cache.stride(0), kv_cache.stride(1),
        kv_scale.stride(0), kv_scale.stride(1), kv_pe.stride(0), kv_pe.stride(1),
        table.stride(0),
        o_part.stride(0), o_part.stride(1), o_part.stride(2),
        lse_part.stride(0), lse_part.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        indices.stride(0) if sparse else 0, indices.stride(1) if sparse else 0,
        float(softmax_scale) * _LOG2E,
        S, H, latent_heads, cfg.num_splits, indices.shape[2] if sparse else 0,
        DV=dv, DR=dr, BLOCK_DV=block_dv, BLOCK_DR=block_dr,
        BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n,
        WRITE_FINAL=write_final, DOT_PRECISION=precision, UPCAST_DOT=upcast_dot, SPARSE=sparse, PAGE_SIZE=page_size,
        KV_FP8=fp8, N_TILES=block_dv // min(_SCALE_TILE, block_dv), TILE_COLS=min(_SCALE_TILE, block_dv),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if not write_final:
        _mla_decode_combine_kernel[(B, rows)](
            o_part, lse_part, out,
            o_part.stride(0), o_part.stride(1), o_part.stride(2),
            lse_part.stride(0), lse_part.stride(1),
            out.stride(0), out.stride(1), out.stride(2),
            H, cfg.num_splits,
            DV=dv, BLOCK_DV=block_dv,
            BLOCK_SPLITS=max(2, triton.next_power_of_2(cfg.num_splits)),
            num_warps=4 if block_dv >= 256 else 1,
        )
    return out
