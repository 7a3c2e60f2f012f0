"""`gta`, Grouped-Tied Attention (Zadouri, Strauss, Dao 2025; docs/variants.md §5).

GQA whose key and value are one tensor: each of the G KV groups caches one tied state
kv_g of width D, used whole as the value and, minus its last d_r columns, as the key's
position-free part; the key's last d_r columns are ONE RoPE key shared by every head:

    q   = (x Wq^T).view(H, D);  q[:, D-d_r:] rotated (rotate-half)
    kv  = (x Wkv^T).view(G, D)                     never rotated
    k_pe = RoPE(x W_rope_k^T + b)   [d_r]
    K_g = cat(kv_g[:D-d_r], k_pe);  V_g = kv_g;  o = softmax(q K^T * D^-0.5 + mask) V

Weights carry the official names (`q_proj`, `kv_proj`, `W_rope_k` with its bias, `o_proj`);
`attention_bias` is off as in the paper's models. Cache: `kv_cache` (B, T, G, D) and
`k_pe_cache` (B, T, d_r): G*D + d_r elements per token per layer (the official training
file broadcasts the RoPE key to H heads before caching; the paper's cache is this one).
The core contract hands the core a K per group, so `core_inputs` assembles K from the two
caches each step (a copy); V is the cache itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants.layers import linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half
from mlabench.variants.rotary_heads import RotaryHeads

if TYPE_CHECKING:
    from mlabench.step import Step


@register_variant
class GroupedTiedAttention(RotaryHeads):
    serving_layouts = False  # its cache is read and written by (batch, token) slices
    name = "gta"
    family = "gqa"
    caches = "tied K/V state per KV group + one shared RoPE key"
    cache_formula = "G*D+d_r"
    rotary_field = "rope_head_dim"  # only the key's and queries' last d_r columns carry position

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        if shape.num_kv_heads is None:
            shape = shape.replace(num_kv_heads=shape.num_heads)
        if shape.rope_head_dim == 0:  # the paper's models rotate half of each head
            shape = shape.replace(rope_head_dim=shape.head_dim // 2 // 2 * 2)
        if not 0 < shape.rope_head_dim < shape.head_dim:
            raise ShapeError("rope_head_dim", f"gta needs 0 < rope_head_dim < head_dim ({shape.head_dim}), "
                                              f"got {shape.rope_head_dim}")
        return super().normalize_shape(shape)

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return sh.kv_heads * sh.head_dim + sh.rope_head_dim

    @classmethod
    def tp_groups(cls, sh: AttentionShape) -> int:
        return sh.kv_heads

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        # A tied head is copied when tp > G; the one RoPE key is on every GPU.
        return cls.groups_per_gpu(sh, tp) * sh.head_dim + sh.rope_head_dim

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        d, h, dh, r = sh.hidden_size, sh.num_heads, sh.head_dim, sh.rope_head_dim
        return d * h * dh + d * sh.kv_heads * dh + (d * r + r) + h * dh * d

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 4 * sh.num_heads * sh.head_dim * step.attended_pairs

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        d, h, dh = sh.hidden_size, sh.num_heads, sh.head_dim
        macs = d * h * dh + d * sh.kv_heads * dh + d * sh.rope_head_dim + h * dh * d
        return step.batch * step.new_tokens * 2 * macs

    @classmethod
    def core_kv_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.kv_heads * sh.head_dim, sh.kv_heads * sh.head_dim  # the assembled K, and V

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        # The per-group K assembled each step for the generic core (a fused kernel would not need it,
        # so the bytes lower bound leaves it out).
        return step.batch * step.total * sh.kv_heads * sh.head_dim

    def _build_kv_weights(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        sh = self.shape
        self.kv_proj = linear(sh.hidden_size, sh.kv_heads * sh.head_dim, device, dtype)
        self.W_rope_k = nn.Linear(sh.hidden_size, sh.rope_head_dim, bias=True, device=device, dtype=dtype)

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        return {"kv_cache": (batch, max_seq_len, sh.kv_heads, sh.head_dim),
                "k_pe_cache": (batch, max_seq_len, sh.rope_head_dim)}

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        q, cos, sin = self._queries(x, start_pos)  # (B, S, H, D), its last d_r columns rotated
        b, s, _ = x.shape
        sh = self.shape
        g, d, r = sh.kv_heads, sh.head_dim, sh.rope_head_dim
        end = start_pos + s
        k_pe = apply_rotate_half(self.W_rope_k(x)[:, :, None, :], cos, sin)[:, :, 0]  # (B, S, d_r)
        new, seen = (slice(None, b), slice(start_pos, end)), (slice(None, b), slice(None, end))
        self._store("kv_cache", new, self.kv_proj(x).view(b, s, g, d))
        self._store("k_pe_cache", new, k_pe)
        kv = self._load("kv_cache", seen)  # (B, T, G, D): V as it is, and K's position-free part
        pe = self._load("k_pe_cache", seen)
        k = torch.cat((kv[..., : d - r], pe[:, :, None, :].expand(-1, -1, g, -1)), dim=-1)
        return q, k, kv, d**-0.5, True
