"""DeepSeek Multi-head Latent Attention (V2 / V2-Lite / V3), three cache strategies.

Shared projections carry the DeepSeek-V3 checkpoint names (`q_a_proj`,
`q_a_layernorm`, `q_b_proj` or `q_proj`, `kv_a_proj_with_mqa`, `kv_a_layernorm`,
`kv_b_proj`, `o_proj`). The strategies differ only in what they cache and how
they attend (MLA.md section 2):

- `mla-expanded`: cache up-projected K (H, d_qk) and V (H, d_v) per token.
- `mla-latent`: cache [c_kv, k_pe] (d_c + d_r per token); re-expand all of it every call.
- `mla-absorbed`: same latent cache; attention runs in latent space as one-KV-head
  attention with q' = [q_nope W_UK, q_pe], k' = [c_kv, k_pe], v' = c_kv.

The latent cache is one tensor (B, T, d_c + d_r) whose first d_c columns are
c_kv: V is a view of K, never a copy, exactly the layout FlashMLA reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlabench.config import AttentionShape
from mlabench.variants.base import AttentionVariant, RMSNorm, linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_interleaved, rope_table


class _MLABase(AttentionVariant):
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

    def _set_rope(self, max_seq_len: int) -> None:
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

    def _out(self, o: Tensor) -> Tensor:
        b, s = o.shape[:2]
        return self.o_proj(o.reshape(b, s, self.shape.num_heads * self.shape.value_dim))


@register_variant
class MLAExpanded(_MLABase):
    name = "mla-expanded"

    def allocate_cache(self, batch: int, max_seq_len: int) -> None:
        sh = self.shape
        self.batch, self.max_seq_len = batch, max_seq_len
        self._new_cache(
            k_cache=(batch, max_seq_len, sh.num_heads, sh.qk_head_dim),
            v_cache=(batch, max_seq_len, sh.num_heads, sh.value_dim),
        )
        self._set_rope(max_seq_len)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        end = start_pos + s
        cos, sin = (t[start_pos:end] for t in self._rope)
        q_nope, q_pe = self._queries(x, cos, sin)
        k, v = self._expand(*self._latent(x, cos, sin))
        k_cache, v_cache = self._cache["k_cache"], self._cache["v_cache"]
        k_cache[:b, start_pos:end] = k
        v_cache[:b, start_pos:end] = v
        q = torch.cat((q_nope, q_pe), dim=-1)  # (B, S, H, d_qk)
        return q, k_cache[:b, :end], v_cache[:b, :end], self.shape.mla_softmax_scale, True

    core_output = _MLABase._out


class _LatentCacheMLA(_MLABase):
    def allocate_cache(self, batch: int, max_seq_len: int) -> None:
        sh = self.shape
        self.batch, self.max_seq_len = batch, max_seq_len
        self._new_cache(kv_cache=(batch, max_seq_len, sh.kv_lora_rank + sh.rope_head_dim))
        self._set_rope(max_seq_len)

    def _write_latent(self, x: Tensor, start_pos: int, cos: Tensor, sin: Tensor) -> Tensor:
        """Write this step's [c_kv, k_pe] and return the cache view (B, T, d_c + d_r)."""
        b, s, _ = x.shape
        c_kv, k_pe = self._latent(x, cos, sin)
        cache = self._cache["kv_cache"]
        cache[:b, start_pos:start_pos + s] = torch.cat((c_kv, k_pe), dim=-1)
        return cache[:b, :start_pos + s]


@register_variant
class MLALatent(_LatentCacheMLA):
    name = "mla-latent"

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        s = x.shape[1]
        cos, sin = (t[start_pos:start_pos + s] for t in self._rope)
        q_nope, q_pe = self._queries(x, cos, sin)
        latent = self._write_latent(x, start_pos, cos, sin)
        k, v = self._expand(*latent.split([self.shape.kv_lora_rank, self.shape.rope_head_dim], dim=-1))
        q = torch.cat((q_nope, q_pe), dim=-1)
        return q, k, v, self.shape.mla_softmax_scale, True

    core_output = _MLABase._out


@register_variant
class MLAAbsorbed(_LatentCacheMLA):
    name = "mla-absorbed"

    def absorbed_query(self, x: Tensor, start_pos: int) -> Tensor:
        """q' = [q_nope W_UK, q_pe] (B, S, H, d_c + d_r) for the tokens of x at start_pos."""
        s = x.shape[1]
        cos, sin = (t[start_pos:start_pos + s] for t in self._rope)
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
        s = x.shape[1]
        d_c = self.shape.kv_lora_rank
        q = self.absorbed_query(x, start_pos)
        cos, sin = (t[start_pos:start_pos + s] for t in self._rope)
        latent = self._write_latent(x, start_pos, cos, sin)[:, :, None, :]  # (B, T, 1, d_c + d_r)
        return q, latent, latent[..., :d_c], self.shape.mla_softmax_scale, True

    def core_output(self, o_lat: Tensor) -> Tensor:
        """o_lat (B, S, H, d_c) -> W_UV per head -> o_proj."""
        return self._out(torch.einsum("bshc,hdc->bshd", o_lat, self._w_uv()))
