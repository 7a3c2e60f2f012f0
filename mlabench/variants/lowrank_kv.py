"""`lowrank-kv`: per-head low-rank K/V (the "MLA adapter" of the project's source documents).

Each head projects x to K and V latents of width r = kv_lora_rank < D and caches
them at that width (2*H*r elements per token), then up-projects them back to D
with per-head matrices at attention time. RoPE (rotate-half) is applied to the
up-projected keys at their absolute positions, so prefill and decode agree.

Weights: `q_proj [H*D, d]`, `k_proj`/`v_proj [H*r, d]` (down), `k_up_proj`/`v_up_proj
[H, D, r]` (per-head up), `o_proj [d, H*D]`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape
from mlabench.variants.base import AttentionVariant, linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half, rope_table


@register_variant
class LowRankKV(AttentionVariant):
    name = "lowrank-kv"

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, d, r, hidden = sh.num_heads, sh.head_dim, sh.kv_lora_rank, sh.hidden_size
        self.q_proj = linear(hidden, h * d, device, dtype)
        self.k_proj = linear(hidden, h * r, device, dtype)
        self.v_proj = linear(hidden, h * r, device, dtype)
        # Per-head up-projections, initialized like a Linear(r, D) per head.
        bound = r**-0.5
        self.k_up_proj = nn.Parameter(torch.empty(h, d, r, device=device, dtype=dtype).uniform_(-bound, bound))
        self.v_up_proj = nn.Parameter(torch.empty(h, d, r, device=device, dtype=dtype).uniform_(-bound, bound))
        self.o_proj = linear(h * d, hidden, device, dtype)

    def allocate_cache(self, batch: int, max_seq_len: int) -> None:
        h, r = self.shape.num_heads, self.shape.kv_lora_rank
        self.batch, self.max_seq_len = batch, max_seq_len
        self._new_cache(k_cache=(batch, max_seq_len, h, r), v_cache=(batch, max_seq_len, h, r))
        self._rope = rope_table(self.shape.head_dim, self.shape, max_seq_len, self.weight_device)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        sh = self.shape
        h, d, r = sh.num_heads, sh.head_dim, sh.kv_lora_rank
        end = start_pos + s
        cos, sin = self._rope
        q = apply_rotate_half(self.q_proj(x).view(b, s, h, d), cos[start_pos:end], sin[start_pos:end])
        k_cache, v_cache = self._cache["k_cache"], self._cache["v_cache"]
        k_cache[:b, start_pos:end] = self.k_proj(x).view(b, s, h, r)
        v_cache[:b, start_pos:end] = self.v_proj(x).view(b, s, h, r)
        k = torch.einsum("bthr,hdr->bthd", k_cache[:b, :end], self.k_up_proj)  # (B, T, H, D)
        k = apply_rotate_half(k, cos[:end], sin[:end])
        v = torch.einsum("bthr,hdr->bthd", v_cache[:b, :end], self.v_up_proj)
        return q, k, v, d**-0.5, True

    def core_output(self, o: Tensor) -> Tensor:
        b, s = o.shape[:2]  # o (B, S, H, D)
        return self.o_proj(o.reshape(b, s, self.shape.num_heads * self.shape.head_dim))
