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

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape, ShapeError
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.layers import linear
from mlabench.variants.registry import register_variant

if TYPE_CHECKING:
    from mlabench.step import Step


@register_variant
class Linformer(AttentionVariant):
    name = "linformer"
    family = "latent"
    caches = "K, V projected to k rows (prefill only)"
    cache_formula = "2*k*H*D per sequence"
    supports_decode = False

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        if shape.kv_lora_rank <= 0:
            raise ShapeError("kv_lora_rank", "linformer needs kv_lora_rank (projected length k) > 0")
        return shape.replace(num_kv_heads=shape.num_heads)  # K and V are projected for every head

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> None:
        return None  # a fixed number of projected rows, whatever the length

    @classmethod
    def kv_cache_elements(cls, sh: AttentionShape, batch: int, seq_len: int) -> int:
        return batch * 2 * sh.kv_lora_rank * sh.num_heads * sh.head_dim

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> None:
        return None  # no per-token cache at any tensor-parallel degree

    @classmethod
    def kv_cache_elements_per_gpu(cls, sh: AttentionShape, batch: int, seq_len: int, tp: int) -> int:
        return batch * 2 * sh.kv_lora_rank * (sh.num_heads // tp) * sh.head_dim  # per-head rows split

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        if seq_len is None:
            raise ValueError("linformer's parameter count depends on seq_len (its [k, n] projections)")
        return 4 * sh.hidden_size * sh.num_heads * sh.head_dim + 2 * sh.kv_lora_rank * seq_len

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        n, k, h, dh = step.total, sh.kv_lora_rank, sh.num_heads, sh.head_dim
        seq_proj = 2 * 2 * k * n * h * dh  # K and V projected along the sequence
        return step.batch * (seq_proj + 4 * h * dh * n * k)

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * step.new_tokens * 2 * 4 * sh.hidden_size * sh.num_heads * sh.head_dim

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        k, h, dh = sh.kv_lora_rank, sh.num_heads, sh.head_dim
        full_kv = 2 * step.total * h * dh  # K, V written then read by the sequence projection
        projected = 2 * k * h * dh  # projected K, V written then read by the core
        return step.batch * 2 * (full_kv + projected)

    @classmethod
    def attended_keys(cls, sh: AttentionShape, step: Step) -> int:
        return sh.kv_lora_rank

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 4 * sh.num_heads * sh.head_dim * step.new_tokens * sh.kv_lora_rank  # bidirectional

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

    def _build_length_state(self, max_seq_len: int) -> None:
        """The sequence projections for n = max_seq_len: weights, not cache."""
        k = self.shape.kv_lora_rank
        bound = max_seq_len**-0.5
        dev, dt = self.weight_device, self.weight_dtype
        self.k_seq_proj = nn.Parameter(
            torch.empty(k, max_seq_len, device=dev, dtype=dt).uniform_(-bound, bound), requires_grad=False
        )
        self.v_seq_proj = nn.Parameter(
            torch.empty(k, max_seq_len, device=dev, dtype=dt).uniform_(-bound, bound), requires_grad=False
        )

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        return {"k_cache": (batch, sh.kv_lora_rank, sh.num_heads, sh.head_dim),
                "v_cache": (batch, sh.kv_lora_rank, sh.num_heads, sh.head_dim)}

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
        rows = (slice(None, b), slice(None))
        self._store("k_cache", rows, torch.einsum("kn,bnhd->bkhd", self.k_seq_proj[:, :n], k))  # (B, k, H, D)
        self._store("v_cache", rows, torch.einsum("kn,bnhd->bkhd", self.v_seq_proj[:, :n], v))
        return q, self._load("k_cache", rows), self._load("v_cache", rows), d**-0.5, False  # bidirectional
