"""DeepSeek Sparse Attention (DeepSeek-V3.2; deepseek-ai/DeepSeek-V3.2-Exp `inference/model.py`).

`mla-absorbed` restricted, per query token, to the `topk` cached tokens a "lightning indexer"
picks, the same set for every head (MLA.md section 5). The indexer reads the MLA query latent:
`wq_b [H_I*d_I, d_q]`, one key head `wk [d_I, d]` with a LayerNorm `k_norm`, and
`weights_proj [H_I, d]`; RoPE (rotate-half, MLA's YaRN frequencies and positions) on the first
d_r dims of its query and key:

    I[s, t] = sum_j w[s, j] * ReLU(q_I[s, j] . k_I[t]),   w[s] = (x_s W_w^T) * H_I^-0.5 * d_I^-0.5
    keep    = topk_t(I[s] + causal, min(k, T)), and causal

The reference quantises q_I, k_I to FP8 after a Hadamard rotation; the rotation is orthogonal
and drops out of q_I . k_I, and the exact (float) math skips the quantisation. Index scores
are computed in fp32 (fp64 for fp64 inputs) so bf16 rounding does not reorder them.

As in the reference: decode attends in latent space (mla-absorbed) with the index mask;
prefill runs expanded (MHA-mode) attention with the index mask. Both hand the generic core an
explicit (B, S, T) mask as its `causal` argument. The cache is MLA's latent [c_kv, k_pe] plus
the indexer key (`index_k_cache`, d_I per token), both in the cache dtype, so a kv_dtype can be
applied to each. `index_topk` returns the selected rows as int32 with -1 for none, the
layout sparse kernels (ours, FlashMLA's) read.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants import kvquant
from mlabench.variants.attention import causal_mask
from mlabench.variants.layers import linear
from mlabench.variants.mla import LatentStep, MLAAbsorbed
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_interleaved, apply_rotate_half

if TYPE_CHECKING:
    from mlabench.step import Step


def selected_pairs(step: Step, topk: int) -> int:
    """(query, key) pairs per sequence the index mask keeps: query s keeps min(k, P + s + 1) keys."""
    first, last = step.context + 1, step.total  # keys visible to the first and the last new query
    if last <= topk:
        return (first + last) * step.new_tokens // 2
    if first >= topk:
        return topk * step.new_tokens
    return (first + topk) * (topk - first + 1) // 2 + topk * (last - topk)


class Indexer(nn.Module):
    """The lightning indexer's weights, under the checkpoint's names (`indexer.wq_b`, ...)."""

    def __init__(self, sh: AttentionShape, device: torch.device | str | None, dtype: torch.dtype | None):
        super().__init__()
        self.wq_b = linear(sh.q_lora_rank, sh.index_heads * sh.index_head_dim, device, dtype)
        self.wk = linear(sh.hidden_size, sh.index_head_dim, device, dtype)
        self.k_norm = nn.LayerNorm(sh.index_head_dim, eps=1e-6, device=device, dtype=dtype)
        self.weights_proj = linear(sh.hidden_size, sh.index_heads, device, dtype)


@register_variant
class DSA(MLAAbsorbed):
    serving_layouts = False  # its cache is read and written by (batch, token) slices
    name = "dsa"
    fp8_cache = ("per token: the latent as DeepSeek's FP8 rows (d_c FP8 + one fp32 scale per 128 + d_r bf16) "
                 "and the indexer key as d_I FP8 + one fp32 scale per 128: 656 + 132 = 788 bytes at V3.2 dims")
    caches = "latent c_kv + RoPE key + the indexer key"
    cache_formula = "d_c+d_r+d_I"
    shape_fields = ("index_heads", "index_head_dim", "topk")

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        sh = super().normalize_shape(shape)
        if sh.q_lora_rank < 1:
            raise ShapeError("q_lora_rank", "dsa's indexer reads the query latent: needs q_lora_rank > 0")
        for name in ("index_heads", "index_head_dim", "topk"):
            if getattr(sh, name) < 1:
                raise ShapeError(name, f"dsa needs {name} >= 1, got {getattr(sh, name)}")
        if sh.index_head_dim < sh.rope_head_dim:
            raise ShapeError("index_head_dim", f"must be at least rope_head_dim ({sh.rope_head_dim}): "
                             "the indexer rotates its first d_r dims")
        if sh.kv_quantized and sh.index_head_dim % 4:
            # The indexer key's fp32 scale follows its d_I FP8 bytes in each row: 4-byte aligned.
            raise ShapeError("index_head_dim", f"an FP8 indexer key needs index_head_dim divisible by 4, "
                                               f"got {sh.index_head_dim}")
        return sh

    @classmethod
    def kv_format(cls, sh: AttentionShape) -> kvquant.KVFormat | None:
        if not sh.kv_quantized:
            return None
        return kvquant.PerCacheFP8(
            {"kv_cache": kvquant.LatentFP8(sh.kv_dtype, sh.kv_lora_rank, sh.rope_head_dim),
             "index_k_cache": kvquant.LatentFP8(sh.kv_dtype, sh.index_head_dim, 0)},
            scales="per token: one fp32 scale per 128 latent values, RoPE key in bf16; the indexer key "
                   "with one fp32 scale per 128 values")

    @classmethod
    def kv_bytes_per_token(cls, sh: AttentionShape) -> int:
        if sh.kv_quantized:  # 656 + 132 = 788 at DeepSeek-V3.2 dims (MLA.md section 5)
            return kvquant.latent_row_bytes(sh.kv_lora_rank, sh.rope_head_dim) + \
                kvquant.latent_row_bytes(sh.index_head_dim, 0)
        return cls.kv_elements_per_token(sh) * sh.element_bytes

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return sh.kv_lora_rank + sh.rope_head_dim + sh.index_head_dim

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        """The whole latent and the whole indexer key on every GPU (MLA.md section 6)."""
        cls.check_tp(sh, tp)
        return cls.kv_elements_per_token(sh)

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        indexer = (sh.q_lora_rank * sh.index_heads * sh.index_head_dim + sh.hidden_size * sh.index_head_dim
                   + 2 * sh.index_head_dim + sh.hidden_size * sh.index_heads)
        return super().param_count(sh, seq_len) + indexer

    @classmethod
    def _indexer_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 2 * sh.index_heads * sh.index_head_dim * step.attended_pairs

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        kept = step.batch * selected_pairs(step, sh.topk)
        if step.context == 0:  # prefill: expanded attention, the latent up-projected once
            expand = step.batch * 2 * sh.num_heads * sh.kv_lora_rank * (sh.head_dim + sh.value_dim) * step.total
            attend = kept * 2 * sh.num_heads * (sh.qk_head_dim + sh.value_dim)
        else:
            expand, attend = 0, kept * 2 * sh.num_heads * (2 * sh.kv_lora_rank + sh.rope_head_dim)
        return cls._indexer_flops(sh, step) + expand + attend

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        return cls.core_flops(sh, step) - cls._indexer_flops(sh, step)

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        indexer = sh.q_lora_rank * sh.index_heads * sh.index_head_dim + sh.hidden_size * (
            sh.index_head_dim + sh.index_heads)
        return super().projection_flops(sh, step) + step.batch * step.new_tokens * 2 * indexer

    @classmethod
    def attended_keys(cls, sh: AttentionShape, step: Step) -> int:
        """Latent rows a sparse kernel reads: the union of the queries' top-k sets, at most T."""
        return min(step.total, step.new_tokens * sh.topk)

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        """Every indexer key read, only the selected latent rows (at most T), this step's rows written."""
        latent = sh.kv_lora_rank + sh.rope_head_dim
        rows = cls.attended_keys(sh, step)
        return step.batch * (step.total * sh.index_head_dim + rows * latent
                             + step.new_tokens * cls.kv_elements_per_token(sh))

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        self.indexer = Indexer(self.shape, device, dtype)
        self._expanded_step = False
        self._step_indices: Tensor | None = None  # the last decode step's top-k rows, for sparse kernels

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        return {"kv_cache": (batch, max_seq_len, sh.kv_lora_rank + sh.rope_head_dim),
                "index_k_cache": (batch, max_seq_len, sh.index_head_dim)}

    def _indexer_rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate-half RoPE on the first d_r dims of x (B, S, H, d_I)."""
        d_r = self.shape.rope_head_dim
        return torch.cat((apply_rotate_half(x[..., :d_r], cos, sin), x[..., d_r:]), dim=-1)

    def index_scores(self, x: Tensor, q_latent: Tensor, start_pos: int) -> Tensor:
        """Write this step's indexer keys; return I (B, S, T) over the cache, -inf where causality hides
        a key, in fp32 (fp64 for fp64 inputs)."""
        b, s, _ = x.shape
        sh = self.shape
        end = start_pos + s
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = (t[start_pos:end] for t in self._rope)
        q = self._indexer_rope(self.indexer.wq_b(q_latent).view(b, s, sh.index_heads, sh.index_head_dim), cos, sin)
        norm = self.indexer.k_norm  # LayerNorm in fp32 (fp64), as the reference runs it
        k = F.layer_norm(self.indexer.wk(x).to(acc), norm.normalized_shape, norm.weight.to(acc), norm.bias.to(acc),
                         norm.eps).to(x.dtype)
        k = self._indexer_rope(k[:, :, None], cos, sin)[:, :, 0]
        self._store("index_k_cache", (slice(None, b), slice(start_pos, end)), k)
        keys = self._load("index_k_cache", (slice(None, b), slice(None, end)))
        w = self.indexer.weights_proj(x).to(acc) * (sh.index_heads**-0.5 * sh.index_head_dim**-0.5)  # (B, S, H_I)
        logits = F.relu(torch.einsum("bsjd,btd->bsjt", q.to(acc), keys.to(acc)))  # (B, S, H_I, T)
        scores = torch.einsum("bsj,bsjt->bst", w, logits)
        return scores.masked_fill(~causal_mask(s, end, x.device), float("-inf"))

    def index_topk(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """(mask (B, S, T) bool, indices (B, S, min(k, T)) int32, -1 for none) of the kept keys."""
        t = scores.shape[-1]
        top = scores.topk(min(self.shape.topk, t), dim=-1)
        visible = torch.isfinite(top.values)  # a query seeing fewer than k keys picks hidden ones too
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top.indices, visible)
        indices = torch.where(visible, top.indices, -1).to(torch.int32)
        return mask, indices

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, Tensor]:
        """Decode: q' (B, S, H, d_c + d_r) against the latent cache (B, T, 1, d_c + d_r), v' its first
        d_c columns. Prefill (start_pos 0): q (B, S, H, d_qk), K and V expanded per head. Both with
        the index mask (B, S, T) as `causal`."""
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        sh = self.shape
        end = start_pos + s
        cos, sin = (t[start_pos:end] for t in self._rope)
        q_latent = self.q_a_layernorm(self.q_a_proj(x))  # (B, S, d_q): the query latent both read
        q = self.q_b_proj(q_latent).view(b, s, sh.num_heads, sh.qk_head_dim)
        q_nope, q_pe = q.split([sh.head_dim, sh.rope_head_dim], dim=-1)
        q_pe = apply_interleaved(q_pe, cos, sin)
        if self.reads_stored_cache and start_pos:
            # A fused core dequantizes the FP8 rows itself: write this step's rows and hand it the
            # stored bytes (B, T, row bytes), without dequantizing the whole cache it never reads.
            self._write("kv_cache", start_pos, torch.cat(self._latent(x, cos, sin), dim=-1))
            latent = self._cache["kv_cache"][:b, :end]
        else:
            latent = self._write_latent(x, start_pos, cos, sin)  # (B, T, d_c + d_r)
        mask, self._step_indices = self.index_topk(self.index_scores(x, q_latent, start_pos))
        self._expanded_step = start_pos == 0
        if self._expanded_step:
            k, v = self._expand(*latent.split([sh.kv_lora_rank, sh.rope_head_dim], dim=-1))
            return torch.cat((q_nope, q_pe), dim=-1), k, v, sh.mla_softmax_scale, mask
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, self._w_uk())  # (B, S, H, d_c)
        kv = latent[:, :, None, :]
        return torch.cat((q_lat, q_pe), dim=-1), kv, kv[..., : sh.kv_lora_rank], sh.mla_softmax_scale, mask

    def latent_step(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                    cache_seqlens: Tensor, check: bool = True) -> LatentStep:
        """mla-absorbed's LatentStep plus this step's top-k `indices`: a sparse kernel attends the
        rows they name (the index mask, causality included), in the same latent cache."""
        if check and (self._expanded_step or not isinstance(causal, Tensor) or self._step_indices is None
                      or self._step_indices.shape[:2] != q.shape[:2]):
            raise RuntimeError("dsa: a latent step needs a decode step's core inputs and its top-k indices")
        step = super().latent_step(q, k, v, scale, True, cache_seqlens, check)
        return dataclasses.replace(step, indices=self._step_indices)

    def core_output(self, o: Tensor) -> Tensor:
        if self._expanded_step:
            return self._out(o)  # o (B, S, H, d_v)
        return super().core_output(o)  # o_lat (B, S, H, d_c) -> W_UV
