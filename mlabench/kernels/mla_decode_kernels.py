"""The Triton kernels of the fused MLA decode (``mla_decode.py`` launches them).

Two kernels:

* ``_mla_decode_split_kernel``: one program per (sequence, split, row block), in a flat
  grid with the row block fastest-varying. The S*H query rows of one
  sequence form the M dimension of a matmul, so each KV tile is loaded once per row block
  and reused by every head in it. Each split runs an online softmax over a contiguous chunk
  of the sequence and writes a normalised fp32 partial output plus its log-sum-exp (or, with
  a single split, the final output directly).
* ``_mla_decode_combine_kernel``: merges the splits with the standard LSE-weighted sum.

The kernels' arguments and constexprs are documented where they are declared; what they
compute, for which cache layouts, is ``mla_decode.py``'s docstring. The module imports without
triton (``HAS_TRITON`` is then False and no kernel exists).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "INTERPRETED"]


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
    INTERPRETED = type(_mla_decode_split_kernel).__name__ == "InterpretedFunction"
else:  # pragma: no cover
    INTERPRETED = False
