"""Fused Multi-head Latent Attention (MLA) decode in Triton, absorbed ("MQA mode") form.

Computes, for every sequence b, new query token s and head h,

    o[b, s, h] = softmax_t((q[b, s, h] . kv[b, t]) * softmax_scale) @ kv[b, t, :head_dim_v]

over the keys t <= cache_seqlens[b] - S + s (causal, bottom-right aligned). All H query
heads share ONE latent KV head whose first ``head_dim_v`` columns (the compressed latent
c_kv) double as the values, so V is read from the same tile as K and never copied. This is
the interface of DeepSeek's FlashMLA (D = 576 = 512 latent + 64 RoPE, dv = 512). The
math (docs/variants.md §3, the absorbed form) and the design are in NOTES.md beside this file;
launch defaults, argument checks and the split heuristic are in ``mla_decode_launch.py``.

Two kernels:

* ``_mla_decode_split_kernel``: one program per (sequence, split, row block), in a flat
  grid with the row block fastest-varying. The S*H query rows of one
  sequence form the M dimension of a matmul, so each KV tile is loaded once per row block
  and reused by every head in it. Each split runs an online softmax over a contiguous chunk
  of the sequence and writes a normalised fp32 partial output plus its log-sum-exp (or, with
  a single split, the final output directly).
* ``_mla_decode_combine_kernel``: merges the splits with the standard LSE-weighted sum.

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

import torch
from torch import Tensor

from mlabench.kernels.mla_decode_launch import LaunchConfig, check_inputs, mla_decode_config

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

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
        return None if _INTERPRETED else "needs a CUDA device or TRITON_INTERPRET=1 (set before import)"
    return f"unsupported device type {device.type!r}"


if HAS_TRITON:
    @triton.jit
    def _mla_decode_split_kernel(
        Q, KV, KV_SCALE, KV_PE, SEQLENS, O_PART, LSE_PART, OUT, INDICES,
        BLOCK_TABLE,  # paged: (B, max pages) int32 page ids; unused when PAGE_SIZE == 0
        stride_qb, stride_qs, stride_qh,
        stride_kvb, stride_kvt,  # paged: KV is the pool, stride_kvb its page stride
        stride_scb, stride_sct,  # FP8 only: the fp32 scales view (B or pages, T or page, tiles)
        stride_peb, stride_pet,  # FP8 only: the bf16 RoPE view (B or pages, T or page, d_r)
        stride_btb,
        stride_opb, stride_opr, stride_ops,
        stride_lb, stride_lr,
        stride_ob, stride_os, stride_oh,
        stride_ib, stride_is,  # INDICES (B, S, K), last dim contiguous; unused when dense
        qk_scale,  # softmax_scale * log2(e): scores live in the log2 domain (exp2 is cheaper)
        S, H,
        G,  # latent heads: row = [c_1 .. c_G (DV each), k_pe (DR)]; 1 for MLA
        num_splits,  # runtime, so a new split count does not trigger a recompile
        TOPK,  # index slots per query token (sparse only)
        DV: tl.constexpr, DR: tl.constexpr,
        BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        WRITE_FINAL: tl.constexpr,  # single split: normalise and store the output directly
        DOT_PRECISION: tl.constexpr,
        # Interpreter only: its tl.dot multiplies bf16 bit patterns (triton issue #11584), so
        # bf16 tiles are widened to fp32 (exact) before each dot. Always False when compiled.
        UPCAST_DOT: tl.constexpr,
        SPARSE: tl.constexpr,  # attend only the rows INDICES names
        PAGE_SIZE: tl.constexpr = 0,  # 0: a contiguous (B, T_max, D) cache; else tokens per page
        KV_FP8: tl.constexpr = 0,  # 0: KV holds q's dtype; 1: FP8 e4m3 rows; 2: FP8 e5m2 rows
        N_TILES: tl.constexpr = 1,  # FP8: scale tiles across BLOCK_DV (BLOCK_DV // TILE_COLS)
        TILE_COLS: tl.constexpr = 128,  # FP8: columns per scale tile, min(128, BLOCK_DV)
    ):
        # One-dimensional grid, row block fastest, then split, then sequence: CUDA issues CTAs
        # in linear order, so the row blocks that read the same KV chunk run side by side
        # (the later ones hit L2) and all CTAs of a sequence are issued together. A flat grid
        # also avoids the 65535 limit on gridDim.y/z for large batches.
        # Then the latent head: the row blocks of one latent head share its KV columns.
        pid = tl.program_id(0)
        HG = H // G  # query heads per latent head
        if SPARSE:  # row blocks never straddle two query tokens: each has its own index list (G = 1)
            blocks_per_token = tl.cdiv(H, BLOCK_H)
            num_row_blocks = S * blocks_per_token
        else:
            num_row_blocks = tl.cdiv(S * HG, BLOCK_H)
        pid_m = pid % num_row_blocks
        pid_g = (pid // num_row_blocks) % G
        pid_s = (pid // (num_row_blocks * G)) % num_splits
        pid_b = pid // (num_row_blocks * G * num_splits)

        seqlen = tl.load(SEQLENS + pid_b)
        # Per-sequence chunking keeps the work balanced when lengths differ in a batch; the
        # chunk is a whole number of KV blocks so every split starts block-aligned. Sparse:
        # the splits cut the index slots.
        length = TOPK if SPARSE else seqlen
        chunk = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
        kv_start = pid_s * chunk
        kv_end = tl.minimum(kv_start + chunk, length)

        # Query rows s * HG + (h mod HG) of this latent head; BLOCK_H of them share every KV tile.
        if SPARSE:  # G = 1 (the launcher's rule): the heads of one query token
            token = pid_m // blocks_per_token
            offs_hb = (pid_m % blocks_per_token) * BLOCK_H + tl.arange(0, BLOCK_H)
            offs_r = token * H + offs_hb
            row_ok = offs_hb < H
        else:
            offs_r = pid_m * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
            row_ok = offs_r < S * HG
        row_s = offs_r // HG
        row_h = pid_g * HG + offs_r % HG  # the query head
        row_glob = row_s * H + row_h  # the row in the split buffers (the combine kernel's numbering)
        # Causal, bottom-right aligned: query s sits at absolute position seqlen - S + s.
        row_last = seqlen - S + row_s  # (BLOCK_H,) last visible key per row
        if not SPARSE:
            # Keys beyond the block's last visible one are useless to every row in it.
            kv_end = tl.minimum(kv_end, seqlen - S + tl.minimum((pid_m * BLOCK_H + BLOCK_H - 1) // HG, S - 1) + 1)

        offs_dv = tl.arange(0, BLOCK_DV)
        offs_dr = tl.arange(0, BLOCK_DR)
        dv_ok = offs_dv < DV
        dr_ok = offs_dr < DR

        # Batch offsets in int64: B * T_max * D overflows int32 for large caches.
        q_base = Q + pid_b.to(tl.int64) * stride_qb
        q_rows = q_base + row_s[:, None] * stride_qs + row_h[:, None] * stride_qh  # (BLOCK_H, 1)
        q_v = tl.load(q_rows + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
        q_r = tl.load(q_rows + DV + offs_dr[None, :], mask=row_ok[:, None] & dr_ok[None, :], other=0.0)
        if UPCAST_DOT:
            q_v = q_v.to(tl.float32)
            q_r = q_r.to(tl.float32)

        if PAGE_SIZE == 0:
            kv_base = KV + pid_b.to(tl.int64) * stride_kvb
            sc_base = KV_SCALE + pid_b.to(tl.int64) * stride_scb
            pe_base = KV_PE + pid_b.to(tl.int64) * stride_peb
        else:
            table_row = BLOCK_TABLE + pid_b.to(tl.int64) * stride_btb

        m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)

        for start_n in tl.range(kv_start, kv_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
            n_ok = offs_n < kv_end
            if SPARSE:
                idx_row = INDICES + pid_b.to(tl.int64) * stride_ib + token * stride_is
                tok = tl.load(idx_row + offs_n, mask=n_ok, other=-1)  # (BLOCK_N,) cache rows, -1 none
                # -1 and anything causality hides read nothing and weigh nothing.
                n_ok = n_ok & (tok >= 0) & (tok <= seqlen - S + token)
                pos = tok.to(tl.int64)
            else:
                pos = offs_n
            if PAGE_SIZE == 0:
                kv_rows = kv_base + pos[:, None] * stride_kvt
                sc_rows = sc_base + pos[:, None] * stride_sct
                pe_rows = pe_base + pos[:, None] * stride_pet
            else:
                # Each token's page through the block table (pages are shuffled: no two tiles
                # need be adjacent); masked tokens read page 0's entry, never their own slot.
                page = tl.load(table_row + pos // PAGE_SIZE, mask=n_ok, other=0).to(tl.int64)
                slot = pos % PAGE_SIZE
                kv_rows = KV + (page * stride_kvb + slot * stride_kvt)[:, None]
                # An FP8 pool's scales and RoPE key are views of the same rows: same page, same slot.
                sc_rows = KV_SCALE + (page * stride_scb + slot * stride_sct)[:, None]
                pe_rows = KV_PE + (page * stride_peb + slot * stride_pet)[:, None]
            # Masked loads never touch positions >= seqlen (the slack may hold garbage).
            if KV_FP8 == 0:
                k_v = tl.load(kv_rows + pid_g * DV + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :],
                              other=0.0)
                k_r = tl.load(kv_rows + G * DV + offs_dr[None, :], mask=n_ok[:, None] & dr_ok[None, :], other=0.0)
            else:  # one latent head (G = 1): the launcher refuses FP8 with G > 1
                # FP8 bytes -> fp32 in registers, times the tile's scale, then q's dtype (exact).
                bits = tl.load(kv_rows + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0)
                # FP8 -> fp32 and times a power-of-two scale: exact; rounded once to q's dtype below.
                if KV_FP8 == 1:
                    lat = bits.to(tl.float8e4nv, bitcast=True).to(tl.float32)
                else:
                    lat = bits.to(tl.float8e5, bitcast=True).to(tl.float32)
                # One scale per (token, 128-column tile), broadcast over its tile through a reshape
                # rather than gathered per element: a (BLOCK_N, BLOCK_DV) fp32 scale tile spills.
                offs_t = tl.arange(0, N_TILES)
                sc = tl.load(sc_rows + offs_t[None, :],
                             mask=n_ok[:, None] & (offs_t * TILE_COLS < DV)[None, :], other=0.0)  # (BLOCK_N, N_TILES)
                lat = tl.reshape(lat, (BLOCK_N, N_TILES, TILE_COLS)) * sc[:, :, None]
                k_v = tl.reshape(lat, (BLOCK_N, BLOCK_DV)).to(Q.dtype.element_ty)
                k_r = tl.load(pe_rows + offs_dr[None, :],
                              mask=n_ok[:, None] & dr_ok[None, :], other=0.0).to(Q.dtype.element_ty)
            if UPCAST_DOT:
                k_v = k_v.to(tl.float32)
                k_r = k_r.to(tl.float32)

            # D = DV + DR is not a power of two (576): two dots over the padded pieces.
            qk = tl.dot(q_v, tl.trans(k_v), input_precision=DOT_PRECISION)  # (BLOCK_H, BLOCK_N)
            qk = tl.dot(q_r, tl.trans(k_r), acc=qk, input_precision=DOT_PRECISION)
            qk = qk * qk_scale
            if SPARSE:
                visible = n_ok[None, :] & row_ok[:, None]
            else:
                visible = n_ok[None, :] & (offs_n[None, :] <= row_last[:, None])
            qk = tl.where(visible, qk, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row may see no key in this tile (or in the whole split): keep its running max
            # at -inf but subtract 0 instead, so exp2 gives 0 rather than NaN from -inf - -inf.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_sub)
            p = tl.math.exp2(qk - m_sub[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            # V is the latent slice of the same tile: no second load.
            acc = acc * alpha[:, None]
            # P is rounded to the cache dtype, as flash attention does, for a 16-bit MMA.
            p_mma = p.to(k_v.dtype)
            if UPCAST_DOT:
                p_mma = p_mma.to(tl.float32)
            acc = tl.dot(p_mma, k_v, acc=acc, input_precision=DOT_PRECISION)
            m_i = m_new

        has_mass = l_i > 0.0
        out = acc / tl.where(has_mass, l_i, 1.0)[:, None]  # rows with nothing visible stay 0

        if WRITE_FINAL:
            o_ptrs = (OUT + pid_b.to(tl.int64) * stride_ob + row_s[:, None] * stride_os
                      + row_h[:, None] * stride_oh + offs_dv[None, :])
            tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        else:
            lse = tl.where(has_mass, m_i + tl.math.log2(tl.where(has_mass, l_i, 1.0)), float("-inf"))
            op_ptrs = (O_PART + pid_b.to(tl.int64) * stride_opb + row_glob[:, None] * stride_opr
                       + pid_s * stride_ops + offs_dv[None, :])
            tl.store(op_ptrs, out, mask=row_ok[:, None] & dv_ok[None, :])
            tl.store(LSE_PART + pid_b.to(tl.int64) * stride_lb + row_glob * stride_lr + pid_s, lse, mask=row_ok)

    @triton.jit
    def _mla_decode_combine_kernel(
        O_PART, LSE_PART, OUT,
        stride_opb, stride_opr, stride_ops,
        stride_lb, stride_lr,
        stride_ob, stride_os, stride_oh,
        H, num_splits,
        DV: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_SPLITS: tl.constexpr,  # num_splits rounded up to a power of two
    ):
        pid_b = tl.program_id(0)
        pid_r = tl.program_id(1)  # query row r = s * H + h

        offs_sp = tl.arange(0, BLOCK_SPLITS)
        lse_row = LSE_PART + pid_b.to(tl.int64) * stride_lb + pid_r * stride_lr
        lse = tl.load(lse_row + offs_sp, mask=offs_sp < num_splits, other=float("-inf"))  # (BLOCK_SPLITS,)
        m = tl.max(lse, 0)
        # Every split empty (cannot happen for valid seqlens): avoid -inf - -inf, output 0.
        m_sub = tl.where(m == float("-inf"), 0.0, m)
        denom = tl.sum(tl.math.exp2(lse - m_sub), 0)

        offs_dv = tl.arange(0, BLOCK_DV)
        dv_ok = offs_dv < DV
        op_row = O_PART + pid_b.to(tl.int64) * stride_opb + pid_r * stride_opr
        acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
        # Loop over splits rather than loading [NUM_SPLITS, DV] at once: with dv = 512 and
        # many splits that tile would not fit in registers.
        for i in tl.range(0, num_splits):
            w = tl.math.exp2(tl.load(lse_row + i) - m_sub)  # 0 for empty splits
            acc += w * tl.load(op_row + i * stride_ops + offs_dv, mask=dv_ok, other=0.0)
        out = acc / tl.where(denom > 0.0, denom, 1.0)

        row_s = pid_r // H
        row_h = pid_r % H
        o_ptrs = OUT + pid_b.to(tl.int64) * stride_ob + row_s * stride_os + row_h * stride_oh + offs_dv
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=dv_ok)

    # triton.jit returns an InterpretedFunction when TRITON_INTERPRET=1 was set at import.
    _INTERPRETED = type(_mla_decode_split_kernel).__name__ == "InterpretedFunction"
else:  # pragma: no cover
    _INTERPRETED = False


def mla_decode(
    q: Tensor,
    kv_cache: Tensor,
    cache_seqlens: Tensor,
    head_dim_v: int,
    softmax_scale: float,
    num_splits: int | None = None,
    *,
    block_h: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    block_table: Tensor | None = None,
    kv_dtype: str = "",
    latent_heads: int = 1,
    indices: Tensor | None = None,
) -> Tensor:
    """Absorbed-MLA decode attention with split-KV; returns ``[B, S, H, head_dim_v]`` in q's dtype.

    q: (B, S, H, D) queries in the absorbed space, D = d_c + d_r.
    kv_cache: (B, T_max, D), one KV head; V = kv_cache[..., :head_dim_v]. May be a strided view,
        but the last dim must have stride 1.
        With ``block_table``: a page pool (num_pages, page_size, D) instead.
    cache_seqlens: (B,) int32 valid tokens per sequence, including the S new ones.
    softmax_scale: multiplies q . k; always explicit (DeepSeek: d_qk**-0.5 times the YaRN factor).
    num_splits, block_h, block_n, num_warps, num_stages: launch knobs; None picks the default
        (``mla_decode_config`` returns the resulting configuration; NOTES.md explains it).
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
    cfg = mla_decode_config(q, kv_cache, num_splits, block_h=block_h, block_n=block_n,
                            num_warps=num_warps, num_stages=num_stages, kv_fp8=bool(kv_dtype), kv_len=kv_len,
                            latent_heads=latent_heads)

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
    upcast_dot = _INTERPRETED and q.dtype == torch.bfloat16
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
