"""Fused Multi-head Latent Attention (MLA) decode in Triton, absorbed ("MQA mode") form.

Computes, for every sequence b, new query token s and head h,

    o[b, s, h] = softmax_t((q[b, s, h] . kv[b, t]) * softmax_scale) @ kv[b, t, :head_dim_v]

over the keys t <= cache_seqlens[b] - S + s (causal, bottom-right aligned). All H query
heads share ONE latent KV head whose first ``head_dim_v`` columns (the compressed latent
c_kv) double as the values, so V is read from the same tile as K and never copied. This is
the interface of DeepSeek's FlashMLA (D = 576 = 512 latent + 64 RoPE, dv = 512); see
/work/shared/MLA.md section 2 for the math and mlabench/kernels/NOTES.md for the design.

Two kernels:

* ``_mla_decode_split_kernel``: grid (B, row blocks, splits). The S*H query rows of one
  sequence form the M dimension of a matmul, so each KV tile is loaded once per row block
  and reused by every head in it. Each split runs an online softmax over a contiguous chunk
  of the sequence and writes a normalised fp32 partial output plus its log-sum-exp (or, with
  a single split, the final output directly).
* ``_mla_decode_combine_kernel``: merges the splits with the standard LSE-weighted sum.

The module imports without triton; ``mla_decode`` then raises ``RuntimeError``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "mla_decode", "triton_unavailable_reason", "default_num_splits"]

_SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Launch defaults, chosen for Hopper with DeepSeek shapes (dv = 512, d_r = 64) and kept
# as the starting point of the tuning log in NOTES.md. BLOCK_H = 16 is the smallest M that
# tl.dot / wgmma accepts; a [16, 512] fp32 accumulator is 64 registers per thread at
# 4 warps, which leaves room for the score tile and the pipelined KV loads.
_BLOCK_H = 16
_BLOCK_N = 32
_NUM_WARPS = 4
_NUM_STAGES = 2
# Split-KV heuristic: aim for about one wave of programs on an H100 (132 SMs), but never
# cut a sequence so finely that a split owns fewer than this many KV blocks (the fixed
# cost of a split - Q load, partial write, combine read - must stay amortised).
_DEFAULT_NUM_SMS = 132
_MIN_BLOCKS_PER_SPLIT = 4
_MAX_SPLITS = 64

_LOG2E = 1.4426950408889634


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


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_NUM_SMS


def default_num_splits(
    batch: int,
    num_row_blocks: int,
    max_seqlen: int,
    block_n: int = _BLOCK_N,
    num_sms: int = _DEFAULT_NUM_SMS,
) -> int:
    """Number of KV splits per (sequence, row block) when the caller passes ``None``.

    Enough programs to fill ``num_sms`` once (batch * row blocks * splits ~ num_sms), capped
    so that a split of a ``max_seqlen``-token sequence still covers at least
    ``_MIN_BLOCKS_PER_SPLIT`` KV blocks, and at ``_MAX_SPLITS``. Uses only host-side
    numbers (``max_seqlen`` is the cache capacity T_max), so it never syncs the device.
    """
    base = max(1, batch * num_row_blocks)
    want = -(-num_sms // base)  # ceil
    max_by_len = max(1, max_seqlen // (_MIN_BLOCKS_PER_SPLIT * block_n))
    return int(max(1, min(want, max_by_len, _MAX_SPLITS)))


if HAS_TRITON:
    @triton.jit
    def _mla_decode_split_kernel(
        Q, KV, SEQLENS, O_PART, LSE_PART, OUT,
        stride_qb, stride_qs, stride_qh,
        stride_kvb, stride_kvt,
        stride_opb, stride_opr, stride_ops,
        stride_lb, stride_lr,
        stride_ob, stride_os, stride_oh,
        qk_scale,  # softmax_scale * log2(e): scores live in the log2 domain (exp2 is cheaper)
        S, H,
        num_splits,  # runtime, so a new split count does not trigger a recompile
        DV: tl.constexpr, DR: tl.constexpr,
        BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        WRITE_FINAL: tl.constexpr,  # single split: normalise and store the output directly
        DOT_PRECISION: tl.constexpr,
        # Interpreter only: its tl.dot multiplies bf16 bit patterns (triton issue #11584), so
        # bf16 tiles are widened to fp32 (exact) before each dot. Always False when compiled.
        UPCAST_DOT: tl.constexpr,
    ):
        pid_b = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_s = tl.program_id(2)

        seqlen = tl.load(SEQLENS + pid_b)
        # Per-sequence chunking keeps the work balanced when lengths differ in a batch; the
        # chunk is a whole number of KV blocks so every split starts block-aligned.
        chunk = tl.cdiv(tl.cdiv(seqlen, num_splits), BLOCK_N) * BLOCK_N
        kv_start = pid_s * chunk
        kv_end = tl.minimum(kv_start + chunk, seqlen)

        # Query rows r = s * H + h of this sequence; BLOCK_H of them share every KV tile.
        offs_r = pid_m * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
        row_ok = offs_r < S * H
        row_s = offs_r // H
        row_h = offs_r % H
        # Causal, bottom-right aligned: query s sits at absolute position seqlen - S + s.
        row_last = seqlen - S + row_s  # (BLOCK_H,) last visible key per row
        # Keys beyond the block's last visible one are useless to every row in it.
        kv_end = tl.minimum(kv_end, seqlen - S + tl.minimum((pid_m * BLOCK_H + BLOCK_H - 1) // H, S - 1) + 1)

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

        kv_base = KV + pid_b.to(tl.int64) * stride_kvb

        m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)

        for start_n in tl.range(kv_start, kv_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
            n_ok = offs_n < kv_end
            kv_rows = kv_base + offs_n[:, None] * stride_kvt
            # Masked loads never touch positions >= seqlen (the slack may hold garbage).
            k_v = tl.load(kv_rows + offs_dv[None, :], mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
            k_r = tl.load(kv_rows + DV + offs_dr[None, :], mask=n_ok[:, None] & dr_ok[None, :], other=0.0)
            if UPCAST_DOT:
                k_v = k_v.to(tl.float32)
                k_r = k_r.to(tl.float32)

            # D = DV + DR is not a power of two (576): two dots over the padded pieces.
            qk = tl.dot(q_v, tl.trans(k_v), input_precision=DOT_PRECISION)  # (BLOCK_H, BLOCK_N)
            qk = tl.dot(q_r, tl.trans(k_r), acc=qk, input_precision=DOT_PRECISION)
            qk = qk * qk_scale
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
            p_mma = p.to(KV.dtype.element_ty)
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
            op_ptrs = (O_PART + pid_b.to(tl.int64) * stride_opb + offs_r[:, None] * stride_opr
                       + pid_s * stride_ops + offs_dv[None, :])
            tl.store(op_ptrs, out, mask=row_ok[:, None] & dv_ok[None, :])
            tl.store(LSE_PART + pid_b.to(tl.int64) * stride_lb + offs_r * stride_lr + pid_s, lse, mask=row_ok)

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


def _check_inputs(
    q: Tensor, kv_cache: Tensor, cache_seqlens: Tensor, head_dim_v: int, softmax_scale: float,
    num_splits: int | None,
) -> None:
    """Raise ValueError naming the first offending argument."""
    if not isinstance(q, Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor [B, S, H, D], got {_desc(q)}")
    if not isinstance(kv_cache, Tensor) or kv_cache.dim() != 3:
        raise ValueError(
            f"kv_cache must be a 3-D tensor [B, T_max, D] (squeeze the KV-head dim), got {_desc(kv_cache)}"
        )
    if not isinstance(cache_seqlens, Tensor) or cache_seqlens.dim() != 1:
        raise ValueError(f"cache_seqlens must be a 1-D tensor [B], got {_desc(cache_seqlens)}")
    B, S, H, D = q.shape
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q dtype must be one of bf16/fp16/fp32, got {q.dtype}")
    if kv_cache.dtype != q.dtype:
        raise ValueError(f"kv_cache dtype {kv_cache.dtype} must match q dtype {q.dtype}")
    if cache_seqlens.dtype != torch.int32:
        raise ValueError(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if kv_cache.device != q.device:
        raise ValueError(f"kv_cache is on {kv_cache.device} but q is on {q.device}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device} but q is on {q.device}")
    if S < 1 or H < 1 or D < 2:
        raise ValueError(f"q shape {tuple(q.shape)} needs S >= 1, H >= 1 and D >= 2")
    if kv_cache.shape[0] != B:
        raise ValueError(f"kv_cache batch {kv_cache.shape[0]} does not match q batch {B}")
    if kv_cache.shape[2] != D:
        raise ValueError(f"kv_cache last dim {kv_cache.shape[2]} does not match q head dim {D}")
    if kv_cache.shape[1] > 0 and kv_cache.stride(2) != 1:
        raise ValueError(f"kv_cache last dim must be contiguous (stride 1), got strides {kv_cache.stride()}")
    if cache_seqlens.shape[0] != B:
        raise ValueError(f"cache_seqlens has {cache_seqlens.shape[0]} entries, q batch is {B}")
    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, int) or not 0 < head_dim_v < D:
        raise ValueError(f"head_dim_v must be an int with 0 < head_dim_v < D={D}, got {head_dim_v!r}")
    if (
        isinstance(softmax_scale, bool)
        or not isinstance(softmax_scale, (int, float))
        or not math.isfinite(softmax_scale)
        or softmax_scale <= 0
    ):
        raise ValueError(f"softmax_scale must be a finite positive float, got {softmax_scale!r}")
    if num_splits is not None and (
        isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1
    ):
        raise ValueError(f"num_splits must be None or an int >= 1, got {num_splits!r}")
    # Value checks only where they cost no device sync.
    if cache_seqlens.device.type == "cpu" and B > 0:
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        if lo < S or hi > kv_cache.shape[1]:
            raise ValueError(
                f"cache_seqlens must lie in [S={S}, T_max={kv_cache.shape[1]}] (they include the S new "
                f"tokens), got min {lo}, max {hi}"
            )


def _desc(x: object) -> str:
    if isinstance(x, Tensor):
        return f"shape {tuple(x.shape)}"
    return type(x).__name__


def mla_decode(
    q: Tensor,
    kv_cache: Tensor,
    cache_seqlens: Tensor,
    head_dim_v: int,
    softmax_scale: float,
    num_splits: int | None = None,
    *,
    block_h: int = _BLOCK_H,
    block_n: int = _BLOCK_N,
    num_warps: int = _NUM_WARPS,
    num_stages: int = _NUM_STAGES,
) -> Tensor:
    """Absorbed-MLA decode attention with split-KV; returns ``[B, S, H, head_dim_v]`` in q's dtype.

    q: (B, S, H, D) queries in the absorbed space, D = d_c + d_r.
    kv_cache: (B, T_max, D), one KV head; V = kv_cache[..., :head_dim_v]. May be a strided view,
        but the last dim must have stride 1.
    cache_seqlens: (B,) int32 valid tokens per sequence, including the S new ones.
    softmax_scale: multiplies q . k; always explicit (DeepSeek: d_qk**-0.5 times the YaRN factor).
    num_splits: KV splits per sequence; None picks ``default_num_splits``.
    block_h, block_n, num_warps, num_stages: launch tuning knobs (keyword-only).
    """
    device = q.device if isinstance(q, Tensor) else torch.device("cpu")
    reason = triton_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"mla_decode cannot run on {device}: {reason}")
    _check_inputs(q, kv_cache, cache_seqlens, head_dim_v, softmax_scale, num_splits)
    for name, val in (("block_h", block_h), ("block_n", block_n)):
        if not isinstance(val, int) or val < 16 or val & (val - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot minimum), got {val!r}")

    B, S, H, D = q.shape
    dv = head_dim_v
    dr = D - dv
    out = torch.empty((B, S, H, dv), dtype=q.dtype, device=q.device)  # (B, S, H, dv)
    if B == 0:
        return out
    if q.stride(3) != 1:
        q = q.contiguous()

    rows = S * H
    num_row_blocks = triton.cdiv(rows, block_h)
    if num_splits is None:
        num_splits = default_num_splits(B, num_row_blocks, kv_cache.shape[1], block_n, _num_sms(q.device))

    block_dv = max(16, triton.next_power_of_2(dv))
    block_dr = max(16, triton.next_power_of_2(dr))
    # fp32 inputs: tl.dot would silently use TF32 on NVIDIA GPUs; force IEEE so fp32 stays fp32.
    upcast_dot = _INTERPRETED and q.dtype == torch.bfloat16
    precision = "ieee" if q.dtype == torch.float32 or upcast_dot else "tf32"

    write_final = num_splits == 1
    if write_final:
        # Unused placeholders: the single-split path stores straight into `out`.
        o_part = out.new_empty((1, 1, 1, 1), dtype=torch.float32)
        lse_part = out.new_empty((1, 1, 1), dtype=torch.float32)
    else:
        # Row-major by (row, split) so the combine kernel reads one row's splits contiguously.
        o_part = q.new_empty((B, rows, num_splits, dv), dtype=torch.float32)  # (B, S*H, NS, dv)
        lse_part = q.new_empty((B, rows, num_splits), dtype=torch.float32)  # (B, S*H, NS)

    grid = (B, num_row_blocks, num_splits)
    _mla_decode_split_kernel[grid](
        q, kv_cache, cache_seqlens, o_part, lse_part, out,
        q.stride(0), q.stride(1), q.stride(2),
        kv_cache.stride(0), kv_cache.stride(1),
        o_part.stride(0), o_part.stride(1), o_part.stride(2),
        lse_part.stride(0), lse_part.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        float(softmax_scale) * _LOG2E,
        S, H, num_splits,
        DV=dv, DR=dr, BLOCK_DV=block_dv, BLOCK_DR=block_dr,
        BLOCK_H=block_h, BLOCK_N=block_n,
        WRITE_FINAL=write_final, DOT_PRECISION=precision, UPCAST_DOT=upcast_dot,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not write_final:
        _mla_decode_combine_kernel[(B, rows)](
            o_part, lse_part, out,
            o_part.stride(0), o_part.stride(1), o_part.stride(2),
            lse_part.stride(0), lse_part.stride(1),
            out.stride(0), out.stride(1), out.stride(2),
            H, num_splits,
            DV=dv, BLOCK_DV=block_dv,
            BLOCK_SPLITS=max(2, triton.next_power_of_2(num_splits)),
            num_warps=4 if block_dv >= 256 else 1,
        )
    return out
