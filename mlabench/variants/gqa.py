"""MHA, GQA and MQA: one implementation with G = num_kv_heads (MHA G = H, MQA G = 1).

Llama checkpoint layout (`q_proj, k_proj, v_proj, o_proj`, no bias) and
rotate-half RoPE. Cache: K and V, (B, T, G, D) each: 2*G*D elements per token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mlabench.config import AttentionShape
from mlabench.variants.base import AttentionVariant, linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half, rope_table


class GroupedQueryAttention(AttentionVariant):
    name = "gqa"

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, g, d, hidden = sh.num_heads, sh.kv_heads, sh.head_dim, sh.hidden_size
        self.q_proj = linear(hidden, h * d, device, dtype)
        self.k_proj = linear(hidden, g * d, device, dtype)
        self.v_proj = linear(hidden, g * d, device, dtype)
        self.o_proj = linear(h * d, hidden, device, dtype)

    def allocate_cache(self, batch: int, max_seq_len: int) -> None:
        g, d = self.shape.kv_heads, self.shape.head_dim
        self.batch, self.max_seq_len = batch, max_seq_len
        self._new_cache(k_cache=(batch, max_seq_len, g, d), v_cache=(batch, max_seq_len, g, d))
        self._rope = rope_table(d, self.shape, max_seq_len, self.weight_device)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        sh = self.shape
        h, g, d = sh.num_heads, sh.kv_heads, sh.head_dim
        end = start_pos + s
        cos, sin = (t[start_pos:end] for t in self._rope)
        q = apply_rotate_half(self.q_proj(x).view(b, s, h, d), cos, sin)  # (B, S, H, D)
        k = apply_rotate_half(self.k_proj(x).view(b, s, g, d), cos, sin)  # (B, S, G, D)
        v = self.v_proj(x).view(b, s, g, d)
        k_cache, v_cache = self._cache["k_cache"], self._cache["v_cache"]
        k_cache[:b, start_pos:end] = k
        v_cache[:b, start_pos:end] = v
        return q, k_cache[:b, :end], v_cache[:b, :end], d**-0.5, True

    def core_output(self, o: Tensor) -> Tensor:
        b, s = o.shape[:2]  # o (B, S, H, D)
        return self.o_proj(o.reshape(b, s, self.shape.num_heads * self.shape.head_dim))


@register_variant
class MultiHeadAttention(GroupedQueryAttention):
    name = "mha"


@register_variant
class MultiQueryAttention(GroupedQueryAttention):
    name = "mqa"


register_variant(GroupedQueryAttention)
