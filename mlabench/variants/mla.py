"""DeepSeek Multi-head Latent Attention (V2 / V2-Lite / V3), three cache strategies.

Shared projections carry the DeepSeek-V3 checkpoint names (`q_a_proj`,
`q_a_layernorm`, `q_b_proj` or `q_proj`, `kv_a_proj_with_mqa`, `kv_a_layernorm`,
`kv_b_proj`, `o_proj`). The strategies differ only in what they cache and how
they attend (docs/variants.md §3):

- `mla-expanded`: cache up-projected K (H, d_qk) and V (H, d_v) per token.
- `mla-latent`: cache [c_kv, k_pe] (d_c + d_r per token); re-expand all of it every call.
- `mla-absorbed`: same latent cache; attention runs in latent space as one-KV-head
  attention with q' = [q_nope W_UK, q_pe], k' = [c_kv, k_pe], v' = c_kv.

The latent cache is one tensor (B, T, d_c + d_r) whose first d_c columns are
c_kv: V is a view of K, never a copy, exactly the layout FlashMLA reads.

Fused latent kernels (triton, FlashMLA, FlashInfer) read that tensor in place rather than
the core's generic (q, k, v) views: `MLAAbsorbed.latent_step` hands them a `LatentStep` (latent_step.py),
the absorbed query and the cache tensor itself with the step's position and lengths, and
is the one place that checks the views really are the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mlabench.config import AttentionShape, ShapeError
from mlabench.errors import UnsupportedError
from mlabench.variants import kvquant
from mlabench.variants.base import AttentionVariant
from mlabench.variants.latent_costs import ExpandedHeadsCore, LatentProjections, ReExpandedLatentCore
from mlabench.variants.latent_step import LatentStep
from mlabench.variants.layers import RMSNorm, linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_interleaved, rope_table

if TYPE_CHECKING:
    from mlabench.step import Step


class _MLABase(LatentProjections, AttentionVariant):
    family = "mla"
    caches = "latent c_kv + the shared RoPE key"
    cache_formula = "d_c+d_r"

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        if shape.kv_lora_rank <= 0:
            raise ShapeError("kv_lora_rank", f"{cls.name} needs kv_lora_rank > 0")
        if shape.rope_head_dim <= 0:
            raise ShapeError("rope_head_dim", f"{cls.name} needs rope_head_dim > 0")
        # The latent is one KV head shared by every query head; the expanded cache has H.
        return shape.replace(num_kv_heads=1)

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return sh.kv_lora_rank + sh.rope_head_dim

    @staticmethod
    def latent_head_dim(sh: AttentionShape) -> int:
        """d_c: the latent is one head that every query head expands from."""
        return sh.kv_lora_rank

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        # The latent serves every head: each GPU holds all of it, whatever tp.
        return sh.kv_lora_rank + sh.rope_head_dim

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        h, d = sh.num_heads, sh.hidden_size
        norms = sh.q_lora_rank + sh.kv_lora_rank  # q_a_layernorm (when present), kv_a_layernorm
        kv_a = d * (sh.kv_lora_rank + sh.rope_head_dim)
        kv_b = sh.kv_lora_rank * h * (sh.head_dim + sh.value_dim)
        return cls._query_macs(sh) + norms + kv_a + kv_b + h * sh.value_dim * d

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, d = sh.num_heads, sh.hidden_size
        if sh.q_lora_rank > 0:
            self.q_a_proj = linear(d, sh.q_lora_rank, device, dtype)
            self.q_a_layernorm = RMSNorm(sh.q_lora_rank, sh.rms_norm_eps, device, dtype)
            self.q_b_proj = linear(sh.q_lora_rank, h * sh.qk_head_dim, device, dtype)
        else:
            self.q_proj = linear(d, h * sh.qk_head_dim, device, dtype)
        self.kv_a_proj_with_mqa = linear(d, sh.kv_lora_rank + sh.rope_head_dim, device, dtype)
        self.kv_a_layernorm = RMSNorm(sh.kv_lora_rank, sh.rms_norm_eps, device, dtype)
        self.kv_b_proj = linear(sh.kv_lora_rank, h * (sh.head_dim + sh.value_dim), device, dtype)
        self.o_proj = linear(h * sh.value_dim, d, device, dtype)

    def _build_length_state(self, max_seq_len: int) -> None:
        self._rope = rope_table(self.shape.rope_head_dim, self.shape, max_seq_len, self.weight_device)

    def _queries(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """q_nope (B, S, H, d_n), q_pe (B, S, H, d_r), RoPE applied."""
        b, s, _ = x.shape
        sh = self.shape
        if sh.q_lora_rank > 0:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(b, s, sh.num_heads, sh.qk_head_dim)
        q_nope, q_pe = q.split([sh.head_dim, sh.rope_head_dim], dim=-1)
        return q_nope, apply_interleaved(q_pe, cos, sin)

    def _latent(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """c_kv (B, S, d_c) normalized, k_pe (B, S, d_r) with RoPE: the one key shared by all heads."""
        kv = self.kv_a_proj_with_mqa(x)
        c_kv, k_pe = kv.split([self.shape.kv_lora_rank, self.shape.rope_head_dim], dim=-1)
        return self.kv_a_layernorm(c_kv), apply_interleaved(k_pe, cos, sin)

    def _expand(self, c_kv: Tensor, k_pe: Tensor) -> tuple[Tensor, Tensor]:
        """Up-project latents to per-head K (B, T, H, d_qk) and V (B, T, H, d_v)."""
        b, t, _ = c_kv.shape
        sh = self.shape
        kvb = self.kv_b_proj(c_kv).view(b, t, sh.num_heads, sh.head_dim + sh.value_dim)
        k_nope, v = kvb.split([sh.head_dim, sh.value_dim], dim=-1)
        k = torch.cat((k_nope, k_pe[:, :, None, :].expand(-1, -1, sh.num_heads, -1)), dim=-1)
        return k, v

    _out = AttentionVariant.core_output  # o (B, S, H, d_v) -> o_proj, for the strategies that transform o first


@register_variant
class MLAExpanded(ExpandedHeadsCore, _MLABase):
    name = "mla-expanded"
    caches = "up-projected K, V per head"
    cache_formula = "H*(d_qk+d_v)"

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        return super().normalize_shape(shape).replace(num_kv_heads=shape.num_heads)

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return sh.num_heads * (sh.qk_head_dim + sh.value_dim)

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        return sh.num_heads // tp * (sh.qk_head_dim + sh.value_dim)  # per-head K, V split with the heads

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 2 * sh.num_heads * (sh.qk_head_dim + sh.value_dim) * step.attended_pairs

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        up = sh.kv_lora_rank * sh.num_heads * (sh.head_dim + sh.value_dim)  # up-project the new tokens
        return step.batch * step.new_tokens * 2 * (cls._shared_projection_macs(sh) + up)

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        return {"k_cache": (batch, max_seq_len, sh.num_heads, sh.qk_head_dim),
                "v_cache": (batch, max_seq_len, sh.num_heads, sh.value_dim)}

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        end = start_pos + s
        cos, sin = self._rope_at(self._rope, b, start_pos, s)
        q_nope, q_pe = self._queries(x, cos, sin)
        k, v = self._expand(*self._latent(x, cos, sin))
        self._write("k_cache", start_pos, k)
        self._write("v_cache", start_pos, v)
        q = torch.cat((q_nope, q_pe), dim=-1)  # (B, S, H, d_qk)
        return q, self._read("k_cache", b, end), self._read("v_cache", b, end), self.shape.mla_softmax_scale, True


class _LatentCacheMLA(_MLABase):
    cache_tensor_count = 1
    fp8_cache = ("128-tile: per token, d_c FP8 + one fp32 scale per 128 of them + d_r RoPE values in bf16, "
                 "d_c+4*ceil(d_c/128)+2*d_r bytes (656 at d_c=512, d_r=64)")

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        shape = super().normalize_shape(shape)
        if shape.kv_quantized and shape.kv_lora_rank % 4:
            # The fp32 scales follow the d_c FP8 bytes in each row and must be 4-byte aligned.
            raise ShapeError("kv_lora_rank", f"an FP8 latent cache needs kv_lora_rank divisible by 4, "
                                             f"got {shape.kv_lora_rank}")
        return shape

    @classmethod
    def kv_format(cls, sh: AttentionShape) -> kvquant.KVFormat | None:
        return kvquant.LatentFP8(sh.kv_dtype, sh.kv_lora_rank, sh.rope_head_dim) if sh.kv_quantized else None

    @classmethod
    def kv_bytes_per_token(cls, sh: AttentionShape) -> int:
        if sh.kv_quantized:
            return kvquant.latent_row_bytes(sh.kv_lora_rank, sh.rope_head_dim)
        return cls.kv_elements_per_token(sh) * sh.element_bytes

    @classmethod
    def kv_cache_bytes(cls, sh: AttentionShape, batch: int, seq_len: int) -> int:
        return batch * seq_len * cls.kv_bytes_per_token(sh)

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        return {"kv_cache": (batch, max_seq_len, sh.kv_lora_rank + sh.rope_head_dim)}

    def _write_latent(self, x: Tensor, start_pos: int, cos: Tensor, sin: Tensor,
                      stored: bool = False) -> Tensor:
        """Write this step's [c_kv, k_pe] and return the cache (B, T, d_c + d_r): a view, or the
        FP8 cache dequantized; with `stored`, the stored rows as they are (a fused core that
        dequantizes FP8 rows itself must not pay for a dequantized copy it never reads)."""
        b, s, _ = x.shape
        c_kv, k_pe = self._latent(x, cos, sin)
        self._write("kv_cache", start_pos, torch.cat((c_kv, k_pe), dim=-1))
        if self.read_pages_in_core and self.cache_map.page_size:
            return self._cache["kv_cache"]  # (num_pages, page, d_c + d_r): a fused kernel reads the pool itself
        if stored:
            return self._cache["kv_cache"][:b, : start_pos + s]  # (B, T, row bytes) of a contiguous cache
        return self._read("kv_cache", b, start_pos + s)


@register_variant
class MLALatent(ReExpandedLatentCore, _LatentCacheMLA):
    name = "mla-latent"
    caches = "latent c_kv + RoPE key; re-expanded every call"

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        # Per cached token: kv_b_proj's output (H*(d_n+d_v)), which V and K's no-RoPE part are views of,
        # and K with the RoPE key concatenated (H*d_qk), a new tensor; both live until the core returns.
        return step.batch * step.total * sh.num_heads * (sh.head_dim + sh.value_dim + sh.qk_head_dim)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        b, s = x.shape[:2]
        cos, sin = self._rope_at(self._rope, b, start_pos, s)
        q_nope, q_pe = self._queries(x, cos, sin)
        latent = self._write_latent(x, start_pos, cos, sin)
        k, v = self._expand(*latent.split([self.shape.kv_lora_rank, self.shape.rope_head_dim], dim=-1))
        q = torch.cat((q_nope, q_pe), dim=-1)
        return q, k, v, self.shape.mla_softmax_scale, True


@register_variant
class MLAAbsorbed(_LatentCacheMLA):
    name = "mla-absorbed"
    caches = "latent c_kv + RoPE key; attends in latent space"

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        # Set by a fused core that reads an FP8 cache's stored rows itself (backends/latent.py);
        # the eager core gets them dequantized.
        self.reads_stored_cache = False

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 2 * sh.num_heads * (2 * sh.kv_lora_rank + sh.rope_head_dim) * step.attended_pairs

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        h = sh.num_heads
        absorb = h * sh.head_dim * sh.kv_lora_rank + h * sh.kv_lora_rank * sh.value_dim  # W_UK, W_UV
        return step.batch * step.new_tokens * 2 * (cls._shared_projection_macs(sh) + absorb)

    @classmethod
    def qo_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.num_heads * (sh.kv_lora_rank + sh.rope_head_dim), sh.num_heads * sh.kv_lora_rank

    @classmethod
    def core_kv_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.kv_lora_rank + sh.rope_head_dim, 0  # V is the first d_c columns of K

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        return cls.core_flops(sh, step)

    def absorbed_query(self, x: Tensor, start_pos: int) -> Tensor:
        """q' = [q_nope W_UK, q_pe] (B, S, H, d_c + d_r) for the tokens of x at start_pos."""
        b, s = x.shape[:2]
        cos, sin = self._rope_at(self._rope, b, start_pos, s)
        q_nope, q_pe = self._queries(x, cos, sin)
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, self._w_uk())  # (B, S, H, d_c)
        return torch.cat((q_lat, q_pe), dim=-1)

    def _w_uk(self) -> Tensor:
        sh = self.shape
        w = self.kv_b_proj.weight.view(sh.num_heads, sh.head_dim + sh.value_dim, sh.kv_lora_rank)
        return w[:, : sh.head_dim]  # (H, d_n, d_c): absorbed at run time, never pre-multiplied

    def _w_uv(self) -> Tensor:
        sh = self.shape
        w = self.kv_b_proj.weight.view(sh.num_heads, sh.head_dim + sh.value_dim, sh.kv_lora_rank)
        return w[:, sh.head_dim :]  # (H, d_v, d_c)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """q' (B, S, H, d_c + d_r), k' the latent cache view (B, T, 1, d_c + d_r), v' = k'[..., :d_c]."""
        self._check_step(x, start_pos)
        b, s = x.shape[:2]
        d_c = self.shape.kv_lora_rank
        q = self.absorbed_query(x, start_pos)
        cos, sin = self._rope_at(self._rope, b, start_pos, s)
        # A fused core dequantizes FP8 rows itself: hand it the stored bytes (B, T, 1, row bytes),
        # whose first d_c bytes are the FP8 latent, and never dequantize the whole cache here.
        stored = isinstance(self.kv_store, kvquant.LatentFP8) and self.reads_stored_cache
        latent = self._write_latent(x, start_pos, cos, sin, stored)[:, :, None, :]  # (B, T, 1, D) or the pool
        self._step_start = start_pos  # a paged step's k is the pool: its position is kept here
        return q, latent, latent[..., :d_c], self.shape.mla_softmax_scale, True

    def latent_step(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, cache_seqlens: Tensor,
                    check: bool = True) -> LatentStep:
        """The core's arguments (from `core_inputs`) as a LatentStep. With `check` (a fused core's
        first call), prove what the kernels rely on: causal, one KV head, k a view of this
        module's cache with its strides (so the kernel reads the cache in place, not a copy) and
        v = k[..., :d_c] (V never materialized)."""
        b, s = q.shape[:2]
        # (B_max, T_max, d_c + d_r), its FP8 byte rows, or the page pool (num_pages, page, d_c + d_r)
        cache = self._cache["kv_cache"]
        d_c = self.shape.kv_lora_rank
        paged = self.read_pages_in_core and self.cache_map is not None and self.cache_map.page_size > 0
        if check:
            if not causal:
                raise UnsupportedError("fused latent cores are causal only")
            if k.dim() != 4 or k.shape[2] != 1:
                raise UnsupportedError(f"fused latent cores take one KV head, got k of shape {tuple(k.shape)}")
            kv = k.squeeze(2)  # (B, T, D) view
            if (kv.untyped_storage().data_ptr() != cache.untyped_storage().data_ptr()
                    or kv.data_ptr() != cache.data_ptr() or kv.stride() != cache.stride()):
                raise RuntimeError(f"{self.name}: k is not a view of the module's kv_cache "
                                   "(a kernel would read a copy)")
            if v.data_ptr() != k.data_ptr() or v.stride() != k.stride() or v.shape[-1] != d_c:
                raise RuntimeError(f"{self.name}: v must be k[..., :{d_c}], a view of the same latent")
            if (not paged and (k.shape[0] != b or k.shape[1] < s)) or cache_seqlens.shape != (b,):
                raise RuntimeError(f"{self.name}: q {tuple(q.shape)}, k {tuple(k.shape)} and cache_seqlens "
                                   f"{tuple(cache_seqlens.shape)} do not describe one step")
        kv_dtype = self.shape.kv_dtype if kvquant.latent_rows(self.kv_store) else ""
        if paged:
            return LatentStep(q, cache, b, self._step_start, s, d_c, scale, cache_seqlens,
                              block_table=self.cache_map.block_table[:b], kv_dtype=kv_dtype)
        return LatentStep(q, cache, b, k.shape[1] - s, s, d_c, scale, cache_seqlens, kv_dtype=kv_dtype)

    def core_output(self, o_lat: Tensor) -> Tensor:
        """o_lat (B, S, H, d_c) -> W_UV per head -> o_proj."""
        return self._out(torch.einsum("bshc,hdc->bshd", o_lat, self._w_uv()))
