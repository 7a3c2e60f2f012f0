"""KV-cache capacity planning: what a model's cache costs per design, and what fits a memory budget.

Analytic, from each variant's own cache formula (`mlabench.analytic`): nothing is allocated.
For every variant a preset can serve, `plan_capacity` gives one `CapacityRow`: stored bytes per
token per layer, per token for the whole model, for `batch` sequences of `seq_len` tokens,
and what one GPU holds at tensor-parallel degree `tp`; with a memory budget, whether that
batch fits and the longest context that does. `max_batch` and `max_context` answer the two
inverse questions for one variant, as a serving frontier asks them.

What the figures honour:
- the cache dtype (`shape.kv_dtype`): FP8 rows are counted as stored, their per-token scales
  with them; per-tensor scales are a fixed cost per layer, held on every GPU;
- tensor parallelism: query heads split over `tp` GPUs, what cannot split (a shared latent,
  a RoPE key, KV heads past G) is counted on every GPU;
- the cache layout: a paged cache (`page_size` > 0) holds whole pages, so every sequence's
  room rounds up to a multiple of the page size (the block table is metadata, not KV);
- `layers`: the model's layer count unless given (a pipeline stage holds fewer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlabench import analytic
from mlabench.config import AttentionShape, ShapeError
from mlabench.errors import UsageError
from mlabench.variants import VARIANT_CLASSES, shape_for_variant


class CapacityError(UsageError):
    """A request the planner refuses; `param` names the parameter at fault (the message starts with it)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


@dataclass(frozen=True)
class CapacityRow:
    """One variant's cache at one (batch, context, tp, layout); bytes are exact integers."""

    variant: str
    family: str
    num_kv_heads: int | None  # G, for the GQA family only (where it tells designs apart)
    bytes_per_token_per_layer: int  # stored, per-token scales included
    bytes_per_token: int  # all layers
    batch_bytes: int  # batch x context slots, all layers, per-layer scales included
    scale_bytes: int  # per-layer FP8 scales over all layers (already in batch_bytes)
    scales: str | None  # the FP8 scale layout in words; None for an unquantized cache
    layout: str | None  # the stored layout's short name (FP8 tiles or per-tensor scales); None when unquantized
    bytes_per_token_per_layer_per_gpu: int
    bytes_per_token_per_gpu: int
    batch_bytes_per_gpu: int
    fits: bool | None = None  # with a budget: the batch fits one GPU's budget
    max_seq_len: int | None = None  # with a budget: the longest context of `batch` sequences that fits

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Footprint:
    """One variant's per-GPU cache cost: bytes per stored token (all layers) and the fixed bytes."""

    per_token: int
    fixed: int
    page_size: int = 0

    def slots(self, seq_len: int) -> int:
        """Token slots one sequence of `seq_len` tokens occupies (whole pages when paged)."""
        return -(-seq_len // self.page_size) * self.page_size if self.page_size else seq_len

    def bytes(self, batch: int, seq_len: int) -> int:
        return self.per_token * batch * self.slots(seq_len) + self.fixed

    def max_batch(self, seq_len: int, memory: int) -> int:
        return max(memory - self.fixed, 0) // (self.per_token * self.slots(seq_len))

    def max_seq_len(self, batch: int, memory: int) -> int:
        slots = max(memory - self.fixed, 0) // (self.per_token * batch)
        return slots - slots % self.page_size if self.page_size else slots


def footprint(variant: str, shape: AttentionShape, tp: int = 1, page_size: int = 0,
              layers: int | None = None) -> Footprint:
    """Per-GPU cost of `variant`'s cache (ShapeError, ValueError or NotImplementedError when the
    shape cannot serve it or the cache does not grow with tokens)."""
    sh = shape_for_variant(variant, shape)
    n = sh.num_layers if layers is None else layers
    per_gpu = analytic.kv_bytes_per_token_per_gpu(variant, sh, tp)
    return Footprint(per_gpu * n, VARIANT_CLASSES[variant].kv_fixed_bytes(sh) * n, page_size)


def max_batch(variant: str, shape: AttentionShape, seq_len: int, memory: int, tp: int = 1, page_size: int = 0,
              layers: int | None = None) -> int:
    """The most sequences of `seq_len` tokens whose cache fits `memory` bytes on one GPU."""
    return footprint(variant, shape, tp, page_size, layers).max_batch(seq_len, memory)


def max_context(variant: str, shape: AttentionShape, batch: int, memory: int, tp: int = 1, page_size: int = 0,
                layers: int | None = None) -> int:
    """The longest context `batch` sequences can each hold within `memory` bytes on one GPU."""
    return footprint(variant, shape, tp, page_size, layers).max_seq_len(batch, memory)


def plan_capacity(shape: AttentionShape, variants: Sequence[str] | None = None, *, batch: int = 1,
                  seq_len: int = 32768, tp: int = 1, memory: int | None = None, page_size: int = 0,
                  layers: int | None = None) -> list[CapacityRow]:
    """One row per variant. `variants=None`: every variant the shape can serve with a per-token
    cache, a special case of another already listed (gqa with G = H is mha) shown once; named
    variants that cannot serve it are refused (UsageError naming the variant and why)."""
    for what, value in (("batch", batch), ("seq_len", seq_len), ("layers", 1 if layers is None else layers)):
        if value <= 0:
            raise CapacityError(what, f"must be a positive integer, got {value}")
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise CapacityError("tp", f"must be a positive integer, got {tp!r}")
    if shape.num_heads % tp:  # per variant, a split may also straddle its KV groups (refused in _row)
        raise CapacityError("tp", f"tensor-parallel degree {tp} does not divide num_heads ({shape.num_heads}) "
                                  f"of {shape.name}")
    explicit = variants is not None
    rows: list[CapacityRow] = []
    shown: list[tuple[type, AttentionShape]] = []
    for name in variants if variants is not None else list(VARIANT_CLASSES):
        if name not in VARIANT_CLASSES:
            raise CapacityError("variant", f"unknown variant {name!r} (choose from {', '.join(VARIANT_CLASSES)})")
        row = _row(name, shape, batch, seq_len, tp, memory, page_size, layers, explicit, shown)
        if row is not None:
            rows.append(row)
    return rows


def _row(name: str, shape: AttentionShape, batch: int, seq_len: int, tp: int, memory: int | None, page_size: int,
         layers: int | None, explicit: bool, shown: list[tuple[type, AttentionShape]]) -> CapacityRow | None:
    cls = VARIANT_CLASSES[name]
    try:
        sh = shape_for_variant(name, shape)
        if cls.kv_elements_per_token(sh) is None:
            raise ValueError(f"{name} keeps a fixed number of rows per sequence, not a per-token cache")
        cost = footprint(name, sh, tp, page_size, layers)
    except ShapeError as exc:
        if exc.field == "tp":  # a split that straddles KV groups: no GPU layout to count, for any variant
            raise CapacityError("tp", f"{str(exc).removeprefix('tp: ')}, in {name} of {shape.name}") from None
        if explicit:
            raise CapacityError("variant", f"{name}: {exc}") from None
        return None
    except (ValueError, NotImplementedError) as exc:
        if explicit:  # asked for by name: say why not
            raise CapacityError("variant", f"{name}: {exc}") from None
        return None
    elements = cls.kv_elements_per_token(sh)
    if not explicit and any(other == sh and (issubclass(c, cls) or issubclass(cls, c))
                            and c.kv_elements_per_token(other) == elements for c, other in shown):
        return None  # the same cache as a special case of itself: gqa with G = H is mha
    shown.append((cls, sh))
    n = sh.num_layers if layers is None else layers
    per_layer = analytic.kv_bytes_per_token(name, sh)
    fixed = cls.kv_fixed_bytes(sh) * n
    whole = Footprint(per_layer * n, fixed, page_size)  # the whole cache, as if on one GPU
    per_gpu = cost.bytes(batch, seq_len)
    return CapacityRow(
        variant=name, family=cls.family, num_kv_heads=sh.kv_heads if cls.family == "gqa" else None,
        bytes_per_token_per_layer=per_layer, bytes_per_token=per_layer * n, batch_bytes=whole.bytes(batch, seq_len),
        scale_bytes=fixed, scales=cls.kv_scale_layout(sh) or None,
        layout=fmt.layout if (fmt := cls.kv_format(sh)) is not None and fmt.layout else None,
        bytes_per_token_per_layer_per_gpu=cost.per_token // n if n else 0, bytes_per_token_per_gpu=cost.per_token,
        batch_bytes_per_gpu=per_gpu,
        fits=None if memory is None else per_gpu <= memory,
        max_seq_len=None if memory is None else cost.max_seq_len(batch, memory))


__all__ = ["CapacityError", "CapacityRow", "Footprint", "footprint", "max_batch", "max_context", "plan_capacity"]
