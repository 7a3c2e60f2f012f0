"""`lowrank-kv`: per-head low-rank K/V (the "MLA adapter" of the project's source documents).

Each head projects x to K and V latents of width r = kv_lora_rank < D and caches
them at that width (2*H*r elements per token), then up-projects them back to D
with per-head matrices at attention time. RoPE (rotate-half) is applied to the
up-projected keys at their absolute positions, so prefill and decode agree.

Weights: `q_proj [H*D, d]`, `k_proj`/`v_proj [H*r, d]` (down), `k_up_proj`/`v_up_proj
[H, D, r]` (per-head up), `o_proj [d, H*D]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half
from mlabench.variants.rotary_heads import SplitKV

if TYPE_CHECKING:
    from mlabench.step import Step


@register_variant
class LowRankKV(SplitKV):
    name = "lowrank-kv"
    family = "latent"
    caches = "per-head K, V latents"
    cache_formula = "2*H*r"

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        if not 0 < shape.kv_lora_rank < shape.head_dim:
            raise ShapeError("kv_lora_rank", f"lowrank-kv needs 0 < kv_lora_rank < head_dim ({shape.head_dim}), "
                                             f"got {shape.kv_lora_rank}")
        return super().normalize_shape(shape.replace(num_kv_heads=shape.num_heads))  # every head: its own latents

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return 2 * sh.num_heads * sh.kv_lora_rank

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        return 2 * (sh.num_heads // tp) * sh.kv_lora_rank  # per-head latents split with the heads

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        d, h, dh, r = sh.hidden_size, sh.num_heads, sh.head_dim, sh.kv_lora_rank
        return d * h * dh + 2 * d * h * r + 2 * h * dh * r + h * dh * d

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        h, dh = sh.num_heads, sh.head_dim
        expand = 2 * 2 * h * sh.kv_lora_rank * dh * step.total  # K and V up-projected for every cached token
        return step.batch * (4 * h * dh * step.attended_pairs + expand)

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        d, h, dh, r = sh.hidden_size, sh.num_heads, sh.head_dim, sh.kv_lora_rank
        return step.batch * step.new_tokens * 2 * (d * h * dh + 2 * d * h * r + h * dh * d)

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        expanded = step.batch * 2 * step.total * 2 * sh.num_heads * sh.head_dim  # up-projected K, V written, read
        return super().cache_traffic_elements(sh, step) + expanded

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        # up-projected K and V, and K again after RoPE, per cached token (a generous bound)
        return step.batch * step.total * 4 * sh.num_heads * sh.head_dim

    def kv_rows(self) -> tuple[int, int]:
        return self.shape.num_heads, self.shape.kv_lora_rank

    def _build_kv_weights(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super()._build_kv_weights(device, dtype)  # k_proj, v_proj: the per-head latents
        h, d, r = self.shape.num_heads, self.shape.head_dim, self.shape.kv_lora_rank
        # Per-head up-projections, initialized like a Linear(r, D) per head.
        bound = r**-0.5
        self.k_up_proj = nn.Parameter(torch.empty(h, d, r, device=device, dtype=dtype).uniform_(-bound, bound))
        self.v_up_proj = nn.Parameter(torch.empty(h, d, r, device=device, dtype=dtype).uniform_(-bound, bound))

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        q, _, _ = self._queries(x, start_pos)
        b, s, _ = x.shape
        h, r = self.kv_rows()
        end = start_pos + s
        k_lat, v_lat = self._append_kv(start_pos, self.k_proj(x).view(b, s, h, r), self.v_proj(x).view(b, s, h, r))
        k = torch.einsum("bthr,hdr->bthd", k_lat, self.k_up_proj)  # (B, T, H, D)
        k = apply_rotate_half(k, self._rope[0][:end], self._rope[1][:end])  # slot t holds position t
        v = torch.einsum("bthr,hdr->bthd", v_lat, self.v_up_proj)
        return q, k, v, self.shape.head_dim**-0.5, True
