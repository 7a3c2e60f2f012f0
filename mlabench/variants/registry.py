"""Variant registry: a decorator at each definition site fills it; everything else reads it.

The registry is the one list of variants: the CLI's choices, the suites' names, the
backends' defaults and the analytic model all come from here, in registration order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mlabench.config import OPTIONAL_FIELDS, AttentionShape, ShapeError, canonical_dtype
from mlabench.errors import UsageError

if TYPE_CHECKING:
    from mlabench.variants.base import AttentionVariant

VARIANT_CLASSES: dict[str, type[AttentionVariant]] = {}


def torch_dtype(name: str) -> torch.dtype:
    """'bf16' / 'bfloat16' -> torch.bfloat16 (config's dtype names are torch's attribute names)."""
    return getattr(torch, canonical_dtype(name))


def register_variant(cls: type[AttentionVariant]) -> type[AttentionVariant]:
    """Class decorator: `@register_variant` above a subclass with a `name` makes it a variant."""
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if name in VARIANT_CLASSES and VARIANT_CLASSES[name] is not cls:
        raise ValueError(f"variant {name!r} registered twice")
    VARIANT_CLASSES[name] = cls
    return cls


def variant_names() -> tuple[str, ...]:
    return tuple(VARIANT_CLASSES)


def variant_class(name: str) -> type[AttentionVariant]:
    """The class registered as `name`; ShapeError naming the field `variant` otherwise."""
    try:
        return VARIANT_CLASSES[name]
    except KeyError:
        raise ShapeError("variant", f"unknown variant {name!r} (choose from {', '.join(VARIANT_CLASSES)})") from None


def shape_for_variant(variant: str, shape: AttentionShape) -> AttentionShape:
    """The shape `variant` actually runs (num_kv_heads set to the KV heads it attends with);
    ShapeError naming the field when the shape cannot serve it. Optional fields the variant does
    not read are at their defaults (config.OPTIONAL_FIELDS)."""
    cls = variant_class(variant)
    sh = cls.normalize_shape(shape)
    unused = {f: default for f, default in OPTIONAL_FIELDS.items()
              if f not in cls.shape_fields and getattr(sh, f) != default}
    return sh.replace(**unused) if unused else sh


def build_variant(name: str, shape: AttentionShape, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> AttentionVariant:
    """A variant with freshly initialized weights (deterministic for a seed) on device/dtype."""
    try:
        cls = variant_class(name)
    except ShapeError as exc:
        raise UsageError(str(exc)) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = cls(shape, device=device, dtype=dtype)
    return module.eval().requires_grad_(False)
