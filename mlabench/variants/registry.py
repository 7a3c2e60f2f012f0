"""Variant registry: a decorator at each definition site fills it; `build_variant` reads it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mlabench.config import VARIANTS, AttentionShape, canonical_dtype
from mlabench.errors import UsageError

if TYPE_CHECKING:
    from mlabench.variants.base import AttentionVariant

VARIANT_CLASSES: dict[str, type[AttentionVariant]] = {}


def torch_dtype(name: str) -> torch.dtype:
    """'bf16' / 'bfloat16' -> torch.bfloat16 (config's dtype names are torch's attribute names)."""
    return getattr(torch, canonical_dtype(name))


def register_variant(cls: type[AttentionVariant]) -> type[AttentionVariant]:
    if cls.name not in VARIANTS:
        raise ValueError(f"variant name {cls.name!r} is not one of config.VARIANTS")
    VARIANT_CLASSES[cls.name] = cls
    return cls


def build_variant(name: str, shape: AttentionShape, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> AttentionVariant:
    """A variant with freshly initialized weights (deterministic for a seed) on device/dtype."""
    try:
        cls = VARIANT_CLASSES[name]
    except KeyError:
        raise UsageError(f"variant: unknown variant {name!r} (choose from {', '.join(VARIANT_CLASSES)})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = cls(shape, device=device, dtype=dtype)
    return module.eval().requires_grad_(False)
