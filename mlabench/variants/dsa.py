"""DeepSeek Sparse Attention (DeepSeek-V3.2; deepseek-ai/DeepSeek-V3.2-Exp `inference/model.py`).

`mla-absorbed` restricted, per query token, to the `topk` cached tokens a "lightning indexer"
picks, the same set for every head (docs/variants.md §5). The indexer reads the MLA query latent:
`wq_b [H_I*d_I, d_q]`, one key head `wk [d_I, d]` with a LayerNorm `k_norm`, and
`weights_proj [H_I, d]`; RoPE (rotate-half, MLA's YaRN frequencies and positions) on the first
d_r dims of its query and key:

    I[s, t] = sum_j w[s, j] * ReLU(q_I[s, j] . k_I[t]),   w[s] = (x_s W_w^T) * H_I^-0.5 * d_I^-0.5
    keep    = topk_t(I[s] + causal, min(k, T)), and causal

As the reference does, q_I and k_I are rotated by the orthonormal Hadamard matrix of size d_I
(which drops out of q_I . k_I in exact arithmetic but spreads outliers before quantization),
and the rotated key is cached as DeepSeek stores it whatever the latent's dtype: d_I FP8 e4m3
values and one power-of-two fp32 scale per 128 of them, 132 bytes per token at d_I = 128
(`index_k_cache`). The indexer reads it dequantized, and so does the float64 reference: the
quantized key is the model's, not an approximation of it. The query is not quantized (DeepSeek's
kernel also takes it in FP8; that is a kernel's choice, not a cached tensor). The rotation and
the index scores run in fp32 (fp64 for fp64 inputs), so bf16 rounding does not reorder them.

As in the reference: decode attends in latent space (mla-absorbed) with the index mask;
prefill runs expanded (MHA-mode) attention with the index mask. Both hand the generic core an
explicit (B, S, T) mask as its `causal` argument. The cache is MLA's latent [c_kv, k_pe], in
the compute dtype or with a kv_dtype in DeepSeek's FP8 rows, plus the indexer key: 1,152 + 132
= 1,284 bytes per token per layer in bf16 at DeepSeek-V3.2 dims, 656 + 132 = 788 in FP8.
`index_topk` returns the selected rows as int32 with -1 for none, the layout sparse kernels
(ours, FlashMLA's) read.
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
from mlabench.variants.latent_step import LatentStep
from mlabench.variants.layers import linear
from mlabench.variants.mla import MLAAbsorbed
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_interleaved, apply_rotate_half

if TYPE_CHECKING:
    from mlabench.step import Step

INDEX_KEY_DTYPE = "fp8_e4m3"  # DeepSeek-V3.2's index_k_cache, whatever the latent's dtype
INDEX_KEY_LAYOUT = "FP8 e4m3 + one fp32 scale per 128 values"


def hadamard(n: int, device: torch.device | str | None, dtype: torch.dtype | None) -> Tensor:
    """The Hadamard matrix of size n (a power of two), entries +-1 (exact in every dtype; times
    n**-0.5 it is orthonormal), Sylvester's construction."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)))
    return h.to(device=device, dtype=dtype)


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
    fp8_cache = ("128-tile + FP8 index key: per token, the latent as DeepSeek's FP8 rows (d_c FP8 + one fp32 "
                 "scale per 128 + d_r bf16) and the indexer key, FP8 in every dtype: 656 + 132 = 788 B at V3.2 dims")
    caches = "latent c_kv + RoPE key, and the indexer key in FP8 (d_I values + one fp32 scale per 128)"
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
        if sh.index_head_dim < 4 or sh.index_head_dim & (sh.index_head_dim - 1):
            # The Hadamard rotation needs a power of two; the key's fp32 scale follows its d_I FP8 bytes.
            raise ShapeError("index_head_dim", f"the indexer's Hadamard rotation needs a power of two >= 4, "
                                               f"got {sh.index_head_dim}")
        return sh

    @classmethod
    def kv_format(cls, sh: AttentionShape) -> kvquant.KVFormat:
        """Always a per-tensor choice: the latent as computed or in DeepSeek's FP8 rows, the indexer
        key in FP8 e4m3 rows with one fp32 scale per 128 values whatever the kv_dtype."""
        index_key = kvquant.LatentFP8(INDEX_KEY_DTYPE, sh.index_head_dim, 0)
        if not sh.kv_quantized:
            return kvquant.PerCacheFP8({"kv_cache": kvquant.ComputeDtype(), "index_k_cache": index_key},
                                       scales=f"indexer key only: {INDEX_KEY_LAYOUT}", layout="FP8 index key")
        return kvquant.PerCacheFP8(
            {"kv_cache": kvquant.LatentFP8(sh.kv_dtype, sh.kv_lora_rank, sh.rope_head_dim), "index_k_cache": index_key},
            scales=f"{kvquant.TILE_LAYOUT}; indexer key {INDEX_KEY_LAYOUT}", layout="128-tile + FP8 index key")

    @classmethod
    def latent_bytes_per_token(cls, sh: AttentionShape) -> int:
        """One token's latent row as stored: 1,152 bytes in bf16, 656 in FP8 at DeepSeek dims."""
        if sh.kv_quantized:
            return kvquant.latent_row_bytes(sh.kv_lora_rank, sh.rope_head_dim)
        return (sh.kv_lora_rank + sh.rope_head_dim) * sh.element_bytes

    @classmethod
    def kv_bytes_per_token(cls, sh: AttentionShape) -> int:
        """The latent row plus the FP8 indexer key (132 bytes at d_I = 128): 1,284 in bf16, 788 in FP8."""
        return cls.latent_bytes_per_token(sh) + kvquant.latent_row_bytes(sh.index_head_dim, 0)

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return sh.kv_lora_rank + sh.rope_head_dim + sh.index_head_dim

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        """The whole latent and the whole indexer key on every GPU (docs/variants.md, tensor parallelism)."""
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
    def scored_keys(cls, sh: AttentionShape, step: Step) -> int:
        """The plain cores score every key of the context and mask all but the top-k."""
        return step.total

    @classmethod
    def context_working_bytes(cls, sh: AttentionShape, step: Step, expands_kv: bool) -> int:
        """The core's copies (base class) and the indexer's fp32 working set: every index key
        dequantized (its scales repeated over 128-wide tiles, the values, their product, the RoPE
        concatenation and the fp32 copy) and per query its per-head logits, their ReLU, the summed
        scores, their masked copy and the top-k mask."""
        tiles = kvquant.TILE * -(-sh.index_head_dim // kvquant.TILE)
        keys = step.batch * step.total * (tiles + 4 * sh.index_head_dim)
        scores = step.batch * step.new_tokens * step.total * (2 * sh.index_heads + 4)
        return super().context_working_bytes(sh, step, expands_kv) + 4 * (keys + scores)

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        """Every indexer key read, only the selected latent rows (at most T), this step's rows written."""
        latent = sh.kv_lora_rank + sh.rope_head_dim
        rows = cls.attended_keys(sh, step)
        return step.batch * (step.total * sh.index_head_dim + rows * latent
                             + step.new_tokens * cls.kv_elements_per_token(sh))

    @classmethod
    def cache_traffic_bytes(cls, sh: AttentionShape, step: Step) -> int:
        """The same traffic at the stored widths: 132-byte indexer keys, latent rows as stored."""
        index_key = kvquant.latent_row_bytes(sh.index_head_dim, 0)
        rows = cls.attended_keys(sh, step)
        return step.batch * (step.total * index_key + rows * cls.latent_bytes_per_token(sh)
                             + step.new_tokens * cls.kv_bytes_per_token(sh))

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        self.indexer = Indexer(self.shape, device, dtype)
        # Not a weight: follows the module's device and dtype, stays out of the checkpoint.
        self.register_buffer("rotation", hadamard(self.shape.index_head_dim, device, dtype), persistent=False)
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
        rotate = self.rotation.to(acc) * sh.index_head_dim**-0.5  # orthonormal, in the scores' precision
        q = q.to(acc) @ rotate  # (B, S, H_I, d_I)
        norm = self.indexer.k_norm  # LayerNorm in fp32 (fp64), as the reference runs it
        k = F.layer_norm(self.indexer.wk(x).to(acc), norm.normalized_shape, norm.weight.to(acc), norm.bias.to(acc),
                         norm.eps).to(x.dtype)
        k = self._indexer_rope(k[:, :, None], cos, sin)[:, :, 0].to(acc) @ rotate  # (B, S, d_I), stored in FP8
        self._store("index_k_cache", (slice(None, b), slice(start_pos, end)), k)
        keys = self._load("index_k_cache", (slice(None, b), slice(None, end)))
        w = self.indexer.weights_proj(x).to(acc) * (sh.index_heads**-0.5 * sh.index_head_dim**-0.5)  # (B, S, H_I)
        logits = F.relu(torch.einsum("bsjd,btd->bsjt", q, keys.to(acc)))  # (B, S, H_I, T)
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
        # A fused core dequantizes the FP8 rows itself: it gets the stored bytes (B, T, row bytes),
        # and the whole latent cache it never reads is not dequantized first.
        latent = self._write_latent(x, start_pos, cos, sin, self.reads_stored_cache and start_pos > 0)
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
