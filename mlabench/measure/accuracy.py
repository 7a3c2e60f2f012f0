"""Accuracy of a backend's output against the float64 eager reference of the same variant.

The reference runs on the first and the last sequence of the batch: enough to catch
a wrong kernel (including one that mishandles batch offsets or the tail of a split),
without a float64 copy of a large cache.

The comparison is element-wise, as FlashMLA's tests compare: non-finite values where
the reference is finite, the worst element's error, and the cosine difference of the
whole output. A norm-wise error would let one wrong query row hide among correct ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mlabench.variants.base import AttentionVariant, chunked_attention

# Worst element's error allowed per dtype, relative to max(|reference element|, output RMS):
# a few units of the dtype's rounding, grown for the reductions (softmax over T, matmuls over d).
REL_TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}
# Cosine difference 1 - 2<o, r> / (|o|^2 + |r|^2) allowed per dtype (FlashMLA checks bf16 at 1e-5).
COS_TOLERANCE: dict[str, float] = {"float64": 1e-18, "float32": 1e-9, "float16": 1e-5, "bfloat16": 1e-5}


def reference_rows(batch: int) -> list[int]:
    """The sequences the reference checks: the first and the last."""
    return sorted({0, batch - 1})


@dataclass(frozen=True)
class Accuracy:
    max_abs_err: float
    rel_err: float  # the worst element's error relative to max(|reference|, RMS of the reference)
    cos_diff: float
    tolerance: float
    cos_tolerance: float
    nonfinite: int  # output elements that are inf/nan where the reference is finite
    worst: str  # where the worst element is and its two values

    @property
    def ok(self) -> bool:
        return self.nonfinite == 0 and self.rel_err <= self.tolerance and self.cos_diff <= self.cos_tolerance

    def describe(self) -> str:
        """One line for the row's `error` column when the case is inaccurate."""
        if self.nonfinite:
            return f"{self.nonfinite} non-finite output element(s) where the reference is finite; {self.worst}"
        return (f"worst element rel err {self.rel_err:.3g} (tolerance {self.tolerance:.0e}), "
                f"cos diff {self.cos_diff:.3g} (tolerance {self.cos_tolerance:.0e}); {self.worst}")


@torch.no_grad()
def reference_output(module: AttentionVariant, x: Tensor, start_pos: int) -> Tensor:
    """float64 eager output for the `reference_rows` of x, (len(rows), S, d).

    Call it before the timed step writes the cache, or after: the step's own slots
    are rewritten by the reference, and the context slots are the same either way.
    """
    rows = reference_rows(x.shape[0])
    ref = module.reference(rows=rows)
    # chunked_attention keeps a long prefill's scores bounded; a variant's own core runs as it is.
    return ref(x[rows].to(torch.float64), start_pos, chunked_attention if ref.generic_core else None)


def compare(output: Tensor, reference: Tensor, dtype: str) -> Accuracy:
    """Element-wise comparison of the output's `reference_rows` with the float64 reference."""
    rows = reference_rows(output.shape[0])
    out = output[rows].to(torch.float64)
    ref = reference
    finite_ref = torch.isfinite(ref)
    bad = ~torch.isfinite(out) & finite_ref
    nonfinite = int(bad.sum().item())
    scale = ref[finite_ref].pow(2).mean().sqrt().clamp_min(1e-300)
    diff = (out - ref).abs().where(finite_ref & ~bad, torch.zeros((), dtype=torch.float64))
    rel = diff / torch.maximum(ref.abs(), scale)
    if nonfinite:
        flat = int(bad.flatten().nonzero()[0].item())
    else:
        flat = int(rel.flatten().argmax().item())
    where = _locate(flat, ref.shape, rows)
    o_val, r_val = out.flatten()[flat].item(), ref.flatten()[flat].item()
    o_fin, r_fin = out.where(finite_ref & ~bad, ref), ref
    cos = 1 - 2 * (o_fin * r_fin).sum() / (o_fin.pow(2).sum() + r_fin.pow(2).sum()).clamp_min(1e-300)
    return Accuracy(
        max_abs_err=float(diff.max().item()) if not nonfinite else float("inf"),
        rel_err=float(rel.max().item()) if not nonfinite else float("inf"),
        cos_diff=max(0.0, float(cos.item())) if not nonfinite else float("inf"),
        tolerance=REL_TOLERANCE[dtype],
        cos_tolerance=COS_TOLERANCE[dtype],
        nonfinite=nonfinite,
        worst=f"worst at {where}: got {o_val:.6g}, want {r_val:.6g}",
    )


def _locate(flat: int, shape: torch.Size, rows: list[int]) -> str:
    """'sequence 7, token 0, channel 113' for a flat index into a (len(rows), S, ...) tensor
    (a core's (rows, S, H, D) output reads 'head h, channel c')."""
    idx = []
    for n in reversed(shape):
        idx.append(flat % n)
        flat //= n
    idx.reverse()
    where = f"sequence {rows[idx[0]]}, token {idx[1]}"
    if len(idx) == 4:
        return where + f", head {idx[2]}, channel {idx[3]}"
    return where + "".join(f", channel {i}" for i in idx[2:])
