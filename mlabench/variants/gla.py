"""`gla-expanded` / `gla-absorbed`, Grouped Latent Attention (Zadouri, Strauss, Dao 2025; docs/variants.md).

MLA whose latent is split into h_c = `num_latent_heads` independent latent heads of width
d_g = kv_lora_rank / h_c, latent head j serving query heads h with h // (H/h_c) == j.
Weights carry the official code's names (`modeling_llama_GLA.py`), all with biases:

    W_dQ [d_q, d] -> q_norm -> W_uQ_rope [H*(D+d_r), d_q]   rows per head [D nope, d_r rope]
      (d_q = q_lora_rank; with q_lora_rank 0 one `W_q [H*(D+d_r), d]` instead)
    W_dKV [h_c*d_g + d_r, d]      the latent heads, then ONE RoPE key shared by all heads
    kv_norm_j [d_g]               an RMSNorm per latent head (j = 1 .. h_c)
    W_ukv_j [(H/h_c)*(D+d_v), d_g]  viewed [H/h_c, D+d_v, d_g]: W_UK = [:, :D], W_UV = [:, D:]
    o_proj [d, H*d_v]             no bias (`attention_bias` off)

RoPE is rotate-half on q[:, D:] and on the shared key; the score scale is (D + d_r)^-0.5.
Cache, one tensor (B, T, h_c*d_g + d_r): the normalized latent heads side by side, then the
rotated RoPE key (the official code caches the latent before its norm; the norm is per
token, so caching after it is the same function and what an absorbed kernel reads).
With a kv_dtype the row is stored in DeepSeek's FP8 tile layout, as MLA's and DSA's latents
are: per latent head d_g FP8 values with one fp32 scale per 128, then the RoPE key in bf16.

- `gla-expanded` re-expands every cached latent to per-head K (D + d_r) and V (d_v) each
  call and attends with H heads, as the official code does.
- `gla-absorbed` attends in latent space, MLA's MQA mode once per latent head: q_lat_h =
  W_UK_h^T q_nope_h, scores q_lat_h . c_j + q_pe_h . k_pe, o_h = W_UV_h (p @ c_j) + b_UV_h.
  The K-side bias is constant over keys and cancels in the softmax; the V-side bias passes
  through, so the biased checkpoints absorb exactly. The core gets one KV head per latent
  head: V is a strided view of the cache, K = [c_j, k_pe] is assembled per step (the generic
  core wants one tensor). A fused kernel instead gets the cache itself as a `LatentStep` with
  `latent_heads` = h_c (`latent_step`), and `forward_fused` runs the step without assembling K.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape, ShapeError
from mlabench.errors import UnsupportedError
from mlabench.variants import kvquant
from mlabench.variants.attention import CoreAttention
from mlabench.variants.base import AttentionVariant
from mlabench.variants.latent_costs import LatentProjections, ReExpandedLatentCore
from mlabench.variants.latent_step import LatentStep
from mlabench.variants.layers import RMSNorm
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half, rope_table

if TYPE_CHECKING:
    from mlabench.step import Step


def _biased(d_in: int, d_out: int, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=True, device=device, dtype=dtype)


class _GLABase(LatentProjections, AttentionVariant):
    serving_layouts = False  # its cache is read and written by (batch, token) slices
    family = "mla"
    caches = "h_c latent heads + the shared RoPE key"
    cache_formula = "h_c*d_g+d_r"
    cache_tensor_count = 1  # one row per token: [c_1 .. c_h_c, k_pe]
    fp8_cache = ("128-tile, as MLA: per token, DeepSeek's tile layout per latent head, d_g FP8 + one fp32 scale "
                 "per 128 of them, then d_r RoPE values in bf16 (656 bytes at h_c=1, d_g=512, d_r=64: MLA's row)")

    # --- shape and cost model ---------------------------------------------------------
    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        h_c = shape.num_latent_heads
        if shape.kv_lora_rank <= 0:
            raise ShapeError("kv_lora_rank", f"{cls.name} needs kv_lora_rank > 0 (h_c*d_g, the whole latent)")
        if shape.rope_head_dim <= 0:
            raise ShapeError("rope_head_dim", f"{cls.name} needs rope_head_dim > 0")
        if shape.num_heads % h_c:
            raise ShapeError("num_latent_heads", f"num_heads ({shape.num_heads}) must be divisible by "
                                                 f"num_latent_heads ({h_c})")
        if shape.kv_lora_rank % h_c:
            raise ShapeError("num_latent_heads", f"kv_lora_rank ({shape.kv_lora_rank}) must be divisible by "
                                                 f"num_latent_heads ({h_c})")
        if shape.kv_quantized and shape.kv_lora_rank % 4:
            # The fp32 scales follow the h_c*d_g FP8 bytes in each row and must be 4-byte aligned.
            raise ShapeError("kv_lora_rank", f"an FP8 latent cache needs kv_lora_rank divisible by 4, "
                                             f"got {shape.kv_lora_rank}")
        return shape.replace(num_kv_heads=h_c)  # one KV head per latent head

    # --- the stored cache: MLA's FP8 tiles, per latent head ----------------------------------
    @classmethod
    def kv_format(cls, sh: AttentionShape) -> kvquant.KVFormat | None:
        """With a kv_dtype, the latent cache in the same tile layout as MLA's and DSA's, so the
        latent designs are compared like with like (at h_c = 1 the row is MLA's, byte for byte)."""
        if not sh.kv_quantized:
            return None
        return kvquant.LatentFP8(sh.kv_dtype, sh.kv_lora_rank, sh.rope_head_dim, sh.num_latent_heads)

    @classmethod
    def kv_bytes_per_token(cls, sh: AttentionShape) -> int:
        if sh.kv_quantized:
            return kvquant.latent_row_bytes(sh.kv_lora_rank, sh.rope_head_dim, sh.num_latent_heads)
        return cls.kv_elements_per_token(sh) * sh.element_bytes

    @classmethod
    def kv_bytes_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int | None:
        """FP8: the latent heads a GPU holds with their own tiles' scales, and the bf16 RoPE key."""
        if not sh.kv_quantized:
            return None
        heads = cls.groups_per_gpu(sh, tp)
        d_g = cls.latent_head_dim(sh)
        return kvquant.latent_row_bytes(heads * d_g, sh.rope_head_dim, heads)

    @classmethod
    def kv_cache_bytes(cls, sh: AttentionShape, batch: int, seq_len: int) -> int:
        return batch * seq_len * cls.kv_bytes_per_token(sh)

    @staticmethod
    def latent_head_dim(sh: AttentionShape) -> int:
        """d_g: the width of one latent head."""
        return sh.kv_lora_rank // sh.num_latent_heads

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return sh.kv_lora_rank + sh.rope_head_dim

    @classmethod
    def tp_groups(cls, sh: AttentionShape) -> int:
        return sh.num_latent_heads

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        # Latent heads shard with their query heads; past h_c GPUs one is copied; the RoPE key everywhere.
        return cls.groups_per_gpu(sh, tp) * cls.latent_head_dim(sh) + sh.rope_head_dim

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        h, d, d_q, q_w = sh.num_heads, sh.hidden_size, sh.q_lora_rank, sh.num_heads * sh.qk_head_dim
        query = cls._query_macs(sh) + q_w + (2 * d_q if d_q > 0 else 0)  # biases, q_norm
        latent = (d + 1) * (sh.kv_lora_rank + sh.rope_head_dim) + sh.kv_lora_rank  # W_dKV, kv_norm_j
        up = h * (sh.head_dim + sh.value_dim) * (cls.latent_head_dim(sh) + 1)  # W_ukv_j with biases
        return query + latent + up + h * sh.value_dim * d

    # --- module -------------------------------------------------------------------------
    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, d, d_q = sh.num_heads, sh.hidden_size, sh.q_lora_rank
        if d_q > 0:
            self.W_dQ = _biased(d, d_q, device, dtype)
            self.q_norm = RMSNorm(d_q, sh.rms_norm_eps, device, dtype)
            self.W_uQ_rope = _biased(d_q, h * sh.qk_head_dim, device, dtype)
        else:
            self.W_q = _biased(d, h * sh.qk_head_dim, device, dtype)
        self.W_dKV = _biased(d, sh.kv_lora_rank + sh.rope_head_dim, device, dtype)
        d_g, per_latent = self.latent_head_dim(sh), h // sh.num_latent_heads
        for j in range(1, sh.num_latent_heads + 1):  # the checkpoint's names: kv_norm_1, W_ukv_1, ...
            setattr(self, f"kv_norm_{j}", RMSNorm(d_g, sh.rms_norm_eps, device, dtype))
            setattr(self, f"W_ukv_{j}", _biased(d_g, per_latent * (sh.head_dim + sh.value_dim), device, dtype))
        self.o_proj = nn.Linear(h * sh.value_dim, d, bias=False, device=device, dtype=dtype)

    def _up(self, j: int) -> nn.Linear:
        return getattr(self, f"W_ukv_{j + 1}")

    def _norm(self, j: int) -> RMSNorm:
        return getattr(self, f"kv_norm_{j + 1}")

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        return {"kv_cache": (batch, max_seq_len, sh.kv_lora_rank + sh.rope_head_dim)}

    def _build_length_state(self, max_seq_len: int) -> None:
        self._rope = rope_table(self.shape.rope_head_dim, self.shape, max_seq_len, self.weight_device)

    def _queries(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """q_nope (B, S, H, D), q_pe (B, S, H, d_r) rotated."""
        b, s, _ = x.shape
        sh = self.shape
        q = self.W_uQ_rope(self.q_norm(self.W_dQ(x))) if sh.q_lora_rank > 0 else self.W_q(x)
        q_nope, q_pe = q.view(b, s, sh.num_heads, sh.qk_head_dim).split([sh.head_dim, sh.rope_head_dim], dim=-1)
        return q_nope, apply_rotate_half(q_pe, cos, sin)

    def _write_latent(self, x: Tensor, start_pos: int, cos: Tensor, sin: Tensor) -> Tensor:
        """Write this step's [c_1 .. c_hc, k_pe] rows; return the cache view (B, T, h_c*d_g + d_r)."""
        b, s, _ = x.shape
        sh = self.shape
        c, k_pe = self.W_dKV(x).split([sh.kv_lora_rank, sh.rope_head_dim], dim=-1)
        heads = c.chunk(sh.num_latent_heads, dim=-1)
        normed = [self._norm(j)(cj) for j, cj in enumerate(heads)]
        k_pe = apply_rotate_half(k_pe[:, :, None, :], cos, sin)[:, :, 0]
        self._store("kv_cache", (slice(None, b), slice(start_pos, start_pos + s)), torch.cat((*normed, k_pe), dim=-1))
        return self._load("kv_cache", (slice(None, b), slice(None, start_pos + s)))

    def _step_rope(self, start_pos: int, s: int) -> tuple[Tensor, Tensor]:
        cos, sin = self._rope
        return cos[start_pos:start_pos + s], sin[start_pos:start_pos + s]

    def _w_up(self) -> Tensor:
        """(H, D + d_v, d_g): every head's up-projection, latent head j's rows for its H/h_c heads."""
        sh = self.shape
        per_latent = sh.num_heads // sh.num_latent_heads
        return torch.cat([self._up(j).weight.view(per_latent, sh.head_dim + sh.value_dim, -1)
                          for j in range(sh.num_latent_heads)])

    def _b_up(self) -> Tensor:
        """(H, D + d_v): the up-projections' biases per head."""
        sh = self.shape
        return torch.cat([self._up(j).bias for j in range(sh.num_latent_heads)]).view(sh.num_heads, -1)

    _out = AttentionVariant.core_output  # o (B, S, H, d_v) -> o_proj, for the strategies that transform o first


@register_variant
class GLAExpanded(ReExpandedLatentCore, _GLABase):
    name = "gla-expanded"
    caches = "h_c latent heads + RoPE key; re-expanded every call"

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        # the up-projections' output (H*(D+d_v)) and K with the RoPE key concatenated (H*(D+d_r)), per token
        return step.batch * step.total * sh.num_heads * (2 * sh.head_dim + sh.value_dim + sh.rope_head_dim)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """q (B, S, H, D + d_r), K (B, T, H, D + d_r) and V (B, T, H, d_v) re-expanded from the cache."""
        self._check_step(x, start_pos)
        sh = self.shape
        cos, sin = self._step_rope(start_pos, x.shape[1])
        q_nope, q_pe = self._queries(x, cos, sin)
        latent = self._write_latent(x, start_pos, cos, sin)
        b, t, _ = latent.shape
        c, k_pe = latent.split([sh.kv_lora_rank, sh.rope_head_dim], dim=-1)
        per_latent = sh.num_heads // sh.num_latent_heads
        kvb = torch.cat([self._up(j)(cj).view(b, t, per_latent, sh.head_dim + sh.value_dim)
                         for j, cj in enumerate(c.chunk(sh.num_latent_heads, dim=-1))], dim=2)  # (B, T, H, D+d_v)
        k_nope, v = kvb.split([sh.head_dim, sh.value_dim], dim=-1)
        k = torch.cat((k_nope, k_pe[:, :, None, :].expand(-1, -1, sh.num_heads, -1)), dim=-1)
        return torch.cat((q_nope, q_pe), dim=-1), k, v, sh.mla_softmax_scale, True


@register_variant
class GLAAbsorbed(_GLABase):
    name = "gla-absorbed"
    caches = "h_c latent heads + RoPE key; attends in latent space"

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 2 * sh.num_heads * (2 * cls.latent_head_dim(sh) + sh.rope_head_dim) * step.attended_pairs

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        absorb = sh.num_heads * (sh.head_dim + sh.value_dim) * cls.latent_head_dim(sh)  # W_UK, W_UV at run time
        return step.batch * step.new_tokens * 2 * (cls._shared_projection_macs(sh) + absorb)

    @classmethod
    def qo_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        d_g = cls.latent_head_dim(sh)
        return sh.num_heads * (d_g + sh.rope_head_dim), sh.num_heads * d_g

    @classmethod
    def core_kv_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.kv_lora_rank + sh.rope_head_dim, 0  # the cache read once: V is a slice of it

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        return cls.core_flops(sh, step)

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * step.total * sh.num_latent_heads * (cls.latent_head_dim(sh) + sh.rope_head_dim)

    def absorbed_query(self, x: Tensor, start_pos: int) -> Tensor:
        """q' = [W_UK_h^T q_nope_h, q_pe_h] (B, S, H, d_g + d_r); W_UK's bias is left out (it cancels)."""
        sh = self.shape
        cos, sin = self._step_rope(start_pos, x.shape[1])
        q_nope, q_pe = self._queries(x, cos, sin)
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, self._w_up()[:, : sh.head_dim])  # (B, S, H, d_g)
        return torch.cat((q_lat, q_pe), dim=-1)

    def latent_views(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """The latent heads (B, T, h_c, d_g) and the RoPE key (B, T, d_r) as strided views of the cache."""
        sh = self.shape
        c, k_pe = latent.split([sh.kv_lora_rank, sh.rope_head_dim], dim=-1)
        return c.unflatten(-1, (sh.num_latent_heads, -1)), k_pe

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """q' (B, S, H, d_g + d_r), k' (B, T, h_c, d_g + d_r) = [c_j, k_pe], v' (B, T, h_c, d_g) a cache view."""
        self._check_step(x, start_pos)
        sh = self.shape
        q = self.absorbed_query(x, start_pos)
        cos, sin = self._step_rope(start_pos, x.shape[1])
        c, k_pe = self.latent_views(self._write_latent(x, start_pos, cos, sin))
        k = torch.cat((c, k_pe[:, :, None, :].expand(-1, -1, sh.num_latent_heads, -1)), dim=-1)
        return q, k, c, sh.mla_softmax_scale, True

    def forward_fused(self, x: Tensor, start_pos: int, core: CoreAttention) -> Tensor:
        """The step with a fused latent core (one that builds a `LatentStep` from v alone): the same
        as forward, less the per-step K assembly the generic core needs; k is passed as None."""
        self._check_step(x, start_pos)
        q = self.absorbed_query(x, start_pos)
        cos, sin = self._step_rope(start_pos, x.shape[1])
        c, _ = self.latent_views(self._write_latent(x, start_pos, cos, sin))
        return self.core_output(core(q, None, c, self.shape.mla_softmax_scale, True))  # type: ignore[arg-type]

    def latent_step(self, q: Tensor, k: Tensor | None, v: Tensor, scale: float, causal: bool,
                    cache_seqlens: Tensor, check: bool = True) -> LatentStep:
        """The core's arguments as a LatentStep over the module's cache (k is not read: the kernel
        reads [c_j, k_pe] from the cache). With `check`, prove v (B, T, h_c, d_g) is a view of the
        cache's latent columns, so the kernel reads the cache in place."""
        b, s = q.shape[:2]
        sh = self.shape
        cache = self._cache["kv_cache"]  # (B_max, T_max, h_c*d_g + d_r)
        d_g = self.latent_head_dim(sh)
        if check:
            if not causal:
                raise UnsupportedError("fused latent cores are causal only")
            view = (cache.stride(0), cache.stride(1), d_g, 1)
            if (v.dim() != 4 or v.shape[0] != b or v.shape[2:] != (sh.num_latent_heads, d_g)
                    or v.data_ptr() != cache.data_ptr() or v.stride() != view):
                raise RuntimeError(f"{self.name}: v is not the latent heads' view of the module's kv_cache "
                                   "(a kernel would read a copy)")
            if cache_seqlens.shape != (b,) or v.shape[1] < s:
                raise RuntimeError(f"{self.name}: q {tuple(q.shape)}, v {tuple(v.shape)} and cache_seqlens "
                                   f"{tuple(cache_seqlens.shape)} do not describe one step")
        return LatentStep(q, cache, b, v.shape[1] - s, s, d_g, scale, cache_seqlens,
                          latent_heads=sh.num_latent_heads)

    def core_output(self, o_lat: Tensor) -> Tensor:
        """o_lat (B, S, H, d_g) -> W_UV per head plus its bias -> o_proj."""
        sh = self.shape
        o = torch.einsum("bshc,hdc->bshd", o_lat, self._w_up()[:, sh.head_dim:]) + self._b_up()[:, sh.head_dim:]
        return self._out(o)
