"""`linformer`: keys and values projected along the sequence axis to k = kv_lora_rank rows.

Per layer, learned `k_seq_proj`/`v_seq_proj` [k, n] (n = the cache's max length,
shared across heads, Linformer's "layerwise sharing" layout) turn K, V (B, n, H, D)
into (B, k, H, D), so scores are (n, k) instead of (n, n): O(n*k).

Every output token mixes every input token, so it is bidirectional and has no
incremental decode: a decode step raises UnsupportedError (status `unsupported`).
What it keeps after prefill are the projected K and V: 2*k*H*D elements per
sequence, independent of n. No RoPE, as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant, linear
from mlabench.variants.registry import register_variant


@register_variant
class Linformer(AttentionVariant):
    name = "linformer"
    supports_decode = False

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, d, hidden = sh.num_heads, sh.head_dim, sh.hidden_size
        self.q_proj = linear(hidden, h * d, device, dtype)
        self.k_proj = linear(hidden, h * d, device, dtype)
        self.v_proj = linear(hidden, h * d, device, dtype)
        self.o_proj = linear(h * d, hidden, device, dtype)
        self.k_seq_proj: nn.Parameter | None = None
        self.v_seq_proj: nn.Parameter | None = None

    def allocate_cache(self, batch: int, max_seq_len: int) -> None:
        """Sizes the sequence projections for n = max_seq_len (created once, kept if n is unchanged)."""
        sh = self.shape
        k, h, d = sh.kv_lora_rank, sh.num_heads, sh.head_dim
        if self.k_seq_proj is None or self.k_seq_proj.shape[1] != max_seq_len:
            bound = max_seq_len**-0.5
            dev, dt = self.weight_device, self.weight_dtype
            self.k_seq_proj = nn.Parameter(
                torch.empty(k, max_seq_len, device=dev, dtype=dt).uniform_(-bound, bound), requires_grad=False
            )
            self.v_seq_proj = nn.Parameter(
                torch.empty(k, max_seq_len, device=dev, dtype=dt).uniform_(-bound, bound), requires_grad=False
            )
        self.batch, self.max_seq_len = batch, max_seq_len
        self._new_cache(k_cache=(batch, k, h, d), v_cache=(batch, k, h, d))

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        if start_pos != 0:
            raise UnsupportedError(
                "linformer has no incremental decode: its sequence projection mixes all tokens (prefill only)"
            )
        self._check_step(x, start_pos)
        b, n, _ = x.shape
        sh = self.shape
        h, d = sh.num_heads, sh.head_dim
        q = self.q_proj(x).view(b, n, h, d)
        k = self.k_proj(x).view(b, n, h, d)
        v = self.v_proj(x).view(b, n, h, d)
        k_cache, v_cache = self._cache["k_cache"], self._cache["v_cache"]
        k_cache[:b] = torch.einsum("kn,bnhd->bkhd", self.k_seq_proj[:, :n], k)  # (B, k, H, D)
        v_cache[:b] = torch.einsum("kn,bnhd->bkhd", self.v_seq_proj[:, :n], v)
        return q, k_cache[:b], v_cache[:b], d**-0.5, False  # bidirectional

    def core_output(self, o: Tensor) -> Tensor:
        b, n = o.shape[:2]  # o (B, n, H, D)
        return self.o_proj(o.reshape(b, n, self.shape.num_heads * self.shape.head_dim))
