"""MHA, GQA and MQA: one implementation with G = num_kv_heads (MHA G = H, MQA G = 1).

Llama checkpoint layout (`q_proj, k_proj, v_proj, o_proj`, no bias) and
rotate-half RoPE. Cache: K and V, (B, T, G, D) each: 2*G*D elements per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from mlabench.config import AttentionShape
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half
from mlabench.variants.rotary_heads import SplitKV

if TYPE_CHECKING:
    from mlabench.step import Step


class GroupedQueryAttention(SplitKV):
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
        return super().normalize_shape(shape)

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

    def kv_rows(self) -> tuple[int, int]:
        return self.shape.kv_heads, self.shape.head_dim

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        q, cos, sin = self._queries(x, start_pos)  # (B, S, H, D)
        b, s, _ = x.shape
        g, d = self.kv_rows()
        k = apply_rotate_half(self.k_proj(x).view(b, s, g, d), cos, sin)  # (B, S, G, D)
        k, v = self._append_kv(start_pos, k, self.v_proj(x).view(b, s, g, d))
        return q, k, v, d**-0.5, True


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
