"""MHA, GQA and MQA: one implementation with G = num_kv_heads (MHA G = H, MQA G = 1).

Llama checkpoint layout (`q_proj, k_proj, v_proj, o_proj`, no bias) and
rotate-half RoPE. Cache: K and V, (B, T, G, D) each: 2*G*D elements per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.layers import linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half, rope_table

if TYPE_CHECKING:
    from mlabench.step import Step


class GroupedQueryAttention(AttentionVariant):
    name = "gqa"
    family = "gqa"
    caches = "K, V per KV group"
    cache_formula = "2*G*D"

    @classmethod
    def _kv_heads(cls, shape: AttentionShape) -> int | None:
        """G for this member of the family (None: the shape's own, H when unset)."""
        return None

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        g = cls._kv_heads(shape)
        if g is not None or shape.num_kv_heads is None:
            shape = shape.replace(num_kv_heads=g if g is not None else shape.num_heads)
        if shape.head_dim % 2:
            raise ShapeError("head_dim", f"must be even for rotate-half RoPE, got {shape.head_dim}")
        return shape

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return 2 * sh.kv_heads * sh.head_dim

    @classmethod
    def tp_groups(cls, sh: AttentionShape) -> int:
        return sh.kv_heads

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        return 2 * cls.groups_per_gpu(sh, tp) * sh.head_dim  # a KV head is copied when tp > G

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        d, h, dh = sh.hidden_size, sh.num_heads, sh.head_dim
        return d * h * dh + 2 * d * sh.kv_heads * dh + h * dh * d

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 4 * sh.num_heads * sh.head_dim * step.attended_pairs

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, g, d, hidden = sh.num_heads, sh.kv_heads, sh.head_dim, sh.hidden_size
        self.q_proj = linear(hidden, h * d, device, dtype)
        self.k_proj = linear(hidden, g * d, device, dtype)
        self.v_proj = linear(hidden, g * d, device, dtype)
        self.o_proj = linear(h * d, hidden, device, dtype)

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        g, d = self.shape.kv_heads, self.shape.head_dim
        return {"k_cache": (batch, max_seq_len, g, d), "v_cache": (batch, max_seq_len, g, d)}

    def _build_length_state(self, max_seq_len: int) -> None:
        self._rope = rope_table(self.shape.head_dim, self.shape, max_seq_len, self.weight_device)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        sh = self.shape
        h, g, d = sh.num_heads, sh.kv_heads, sh.head_dim
        end = start_pos + s
        cos, sin = self._rope_at(self._rope, b, start_pos, s)
        q = apply_rotate_half(self.q_proj(x).view(b, s, h, d), cos, sin)  # (B, S, H, D)
        k = apply_rotate_half(self.k_proj(x).view(b, s, g, d), cos, sin)  # (B, S, G, D)
        v = self.v_proj(x).view(b, s, g, d)
        self._write("k_cache", start_pos, k)
        self._write("v_cache", start_pos, v)
        return q, self._read("k_cache", b, end), self._read("v_cache", b, end), d**-0.5, True



@register_variant
class MultiHeadAttention(GroupedQueryAttention):
    name = "mha"
    caches = "K, V per head"
    cache_formula = "2*H*D"

    @classmethod
    def _kv_heads(cls, shape: AttentionShape) -> int:
        return shape.num_heads


@register_variant
class MultiQueryAttention(GroupedQueryAttention):
    name = "mqa"
    caches = "one K, V head"
    cache_formula = "2*D"

    @classmethod
    def _kv_heads(cls, shape: AttentionShape) -> int:
        return 1


register_variant(GroupedQueryAttention)
