"""Accuracy of a backend's output against the float64 eager reference of the same variant.

The reference runs on at most `REFERENCE_BATCH` sequences (the first ones of the
batch): enough to catch a wrong kernel, without a float64 copy of a large cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mlabench.variants.base import AttentionVariant, chunked_attention

REFERENCE_BATCH = 2

# Norm-wise relative error allowed per dtype: a few units of the dtype's rounding,
# grown for the reductions (softmax over T, matmuls over d).
REL_TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}


@dataclass(frozen=True)
class Accuracy:
    max_abs_err: float
    rel_err: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.rel_err <= self.tolerance


@torch.no_grad()
def reference_output(module: AttentionVariant, x: Tensor, start_pos: int) -> Tensor:
    """float64 eager output for the first REFERENCE_BATCH sequences of x.

    Call it before the timed step writes the cache, or after: the step's own slots
    are rewritten by the reference, and the context slots are the same either way.
    """
    nb = min(x.shape[0], REFERENCE_BATCH)
    ref = module.reference(batch=nb)
    return ref(x[:nb].to(torch.float64), start_pos, chunked_attention)


def compare(output: Tensor, reference: Tensor, dtype: str) -> Accuracy:
    nb = reference.shape[0]
    diff = output[:nb].to(torch.float64) - reference
    if not torch.isfinite(output[:nb]).all():
        return Accuracy(float("inf"), float("inf"), REL_TOLERANCE[dtype])
    rel = (diff.norm() / reference.norm().clamp_min(1e-300)).item()
    return Accuracy(diff.abs().max().item(), rel, REL_TOLERANCE[dtype])
