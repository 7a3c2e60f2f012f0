"""The frame mha/gqa/mqa, gta and lowrank-kv share: Llama's query and output projections around
a RoPE'd query, and, for gqa and lowrank-kv, K and V cached as two tensors.

`RotaryHeads`: `q_proj` [H*D, d] makes H query heads of D whose last `rotary_dim` columns (all
of them; gta's d_r) turn with rotate-half RoPE at the tokens' positions (an even width, which
`normalize_shape` checks after the subclass's own), and `o_proj` [d, H*D]
takes the heads' outputs back (`AttentionVariant.core_output`). A variant adds its key and value
weights in `_build_kv_weights`, which runs between the two: the checkpoints' order, so one seed
draws the same weights whatever the variant adds. Its `core_inputs` starts with `_queries`.

`SplitKV`: K and V each cached as (B, T, heads, width), projected by `k_proj` and `v_proj`
[heads*width, d]: G heads of D for gqa, H latents of r for lowrank-kv (`kv_rows`).
`_append_kv` writes a step's rows and reads both caches back up to the step's last token.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.layers import linear
from mlabench.variants.rope import apply_rotate_half, rope_table


class RotaryHeads(AttentionVariant):
    """H query heads of D from `q_proj`, RoPE on their last `rotary_dim` columns, out through `o_proj`."""

    rotary_field: ClassVar[str] = "head_dim"  # the shape field that is the rotated width: the whole head

    @classmethod
    def rotary_dim(cls, sh: AttentionShape) -> int:
        """Columns of each query head that carry position (rotate-half RoPE)."""
        return getattr(sh, cls.rotary_field)

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        """The subclass's shape, checked for what RoPE needs: rotate-half turns column pairs."""
        if cls.rotary_dim(shape) % 2:
            raise ShapeError(cls.rotary_field, f"must be even for rotate-half RoPE, got {cls.rotary_dim(shape)}")
        return shape

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        self.q_proj = linear(sh.hidden_size, sh.num_heads * sh.head_dim, device, dtype)
        self._build_kv_weights(device, dtype)
        self.o_proj = linear(sh.num_heads * sh.head_dim, sh.hidden_size, device, dtype)

    def _build_kv_weights(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        """The variant's key and value weights (built after `q_proj`, before `o_proj`)."""
        raise NotImplementedError

    def _build_length_state(self, max_seq_len: int) -> None:
        self._rope = rope_table(self.rotary_dim(self.shape), self.shape, max_seq_len, self.weight_device)

    def _queries(self, x: Tensor, start_pos: int) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, S, H, D) of the new tokens x at start_pos, RoPE applied, and the (cos, sin) of their
        positions for the keys. Checks the step first, as every `core_inputs` must."""
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        sh = self.shape
        d, r = sh.head_dim, self.rotary_dim(sh)
        cos, sin = self._rope_at(self._rope, b, start_pos, s)
        q = self.q_proj(x).view(b, s, sh.num_heads, d)
        if r == d:
            return apply_rotate_half(q, cos, sin), cos, sin
        return torch.cat((q[..., : d - r], apply_rotate_half(q[..., d - r:], cos, sin)), dim=-1), cos, sin


class SplitKV(RotaryHeads):
    """K and V cached as `k_cache` and `v_cache` (B, T, heads, width), from `k_proj` and `v_proj`."""

    def kv_rows(self) -> tuple[int, int]:
        """(heads, width) of one token's cached K, and of its V."""
        raise NotImplementedError

    def _build_kv_weights(self, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        heads, width = self.kv_rows()
        self.k_proj = linear(self.shape.hidden_size, heads * width, device, dtype)
        self.v_proj = linear(self.shape.hidden_size, heads * width, device, dtype)

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        rows = (batch, max_seq_len, *self.kv_rows())
        return {"k_cache": rows, "v_cache": rows}

    def _append_kv(self, start_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the step's rows k, v (B, S, heads, width) at start_pos; K and V of every slot up to
        the step's last token (B, T, heads, width)."""
        b, s = k.shape[:2]
        self._write("k_cache", start_pos, k)
        self._write("v_cache", start_pos, v)
        return self._read("k_cache", b, start_pos + s), self._read("v_cache", b, start_pos + s)
