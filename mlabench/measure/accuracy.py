"""Accuracy of a backend's output against the float64 eager reference of the same variant.

The reference runs on the first and the last sequence of the batch: enough to catch
a wrong kernel (including one that mishandles batch offsets or the tail of a split),
without a float64 copy of a large cache.

The comparison is element-wise, as FlashMLA's tests compare: non-finite values where
the reference is finite, the worst element's error, and the cosine difference of the
whole output. A norm-wise error would let one wrong query row hide among correct ones.

FP8 caches. The reference holds the unquantized cache (what the same case without FP8
holds), so `rel_err` is the whole error a user of the FP8 cache sees. The part the
quantization alone causes is `quant_err`: the float64 reference run on the dequantized
cache, compared with the unquantized one in the same way. Quantization error is a result,
not a failure: an FP8 row is `inaccurate` only when its error exceeds the quantization's
own by more than the compute dtype allows a kernel, i.e. past
`FP8_SLACK * (quant_err + REL_TOLERANCE[dtype])` (and the cosine difference past
`FP8_SLACK * (sqrt(quant cos) + sqrt(COS_TOLERANCE[dtype]))**2`). The errors add at worst
(triangle inequality), so a backend that is exact on the dequantized cache passes, and one
that reads a wrong scale or row does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mlabench.variants.attention import chunked_attention
from mlabench.variants.base import AttentionVariant

# Worst element's error allowed per dtype, relative to max(|reference element|, output RMS):
# a few units of the dtype's rounding, grown for the reductions (softmax over T, matmuls over d).
# float64: a sum of n terms taken in another order (a fused kernel, SDPA, inductor) may differ
# by about n * u relative, u = 2^-53 (half of eps = 2.2e-16). A step chains reductions over
# the hidden size (<= 16384), the head dims (<= 576), the context (<= 2^17 tokens) and the
# output projection (<= 16384): n <= 2^18 in all, so n * u = 2^-35 ~ 3e-11, and 1e-10 holds it.
REL_TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}
# Cosine difference 1 - 2<o, r> / (|o|^2 + |r|^2) = |o - r|^2 / (|o|^2 + |r|^2) allowed per dtype
# (FlashMLA checks bf16 at 1e-5). It is about half the squared norm-wise relative error, so an
# element tolerance tau bounds it by tau^2; each dtype's sits a little under that, so an error
# spread over every element is caught before one element's is. float64: (1e-10)^2 / 10 = 1e-21,
# above (2^-35)^2 / 2 ~ 4e-22, the worst a reordered float64 sum of 2^18 terms can reach.
COS_TOLERANCE: dict[str, float] = {"float64": 1e-21, "float32": 1e-9, "float16": 1e-5, "bfloat16": 1e-5}
# Room for the two errors being measured against slightly different denominators (the
# unquantized reference's elements, not the dequantized one's).
FP8_SLACK = 1.25


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
def reference_output(module: AttentionVariant, x: Tensor, start_pos: int, unquantized: bool = True) -> Tensor:
    """float64 eager output for the `reference_rows` of x, (len(rows), S, d), on the unquantized
    cache (an FP8 cache's values before quantization), or with `unquantized=False` on the cache
    as stored (dequantized).

    Call it before the timed step writes the cache, or after: the step's own slots
    are rewritten by the reference, and the context slots are the same either way.
    """
    rows = reference_rows(x.shape[0])
    ref = module.reference(rows=rows, unquantized=unquantized)
    # chunked_attention keeps a long prefill's scores bounded; a variant's own core runs as it is.
    return ref(x[rows].to(torch.float64), start_pos, chunked_attention if ref.generic_core else None)


def quant_tolerances(dtype: str, quant: Accuracy | None) -> tuple[float, float]:
    """(worst-element, cosine) tolerances of a row in compute dtype `dtype` whose cache
    quantization alone costs `quant` (None: not quantized)."""
    rel, cos = REL_TOLERANCE[dtype], COS_TOLERANCE[dtype]
    if quant is None:
        return rel, cos
    return FP8_SLACK * (quant.rel_err + rel), FP8_SLACK * (quant.cos_diff**0.5 + cos**0.5) ** 2


def compare(output: Tensor, reference: Tensor, dtype: str, quant: Accuracy | None = None,
            rows: list[int] | None = None) -> Accuracy:
    """Element-wise comparison of the output's `reference_rows` with the float64 reference.
    Given `rows`, the output holds only those sequences already (a second reference). `quant`
    is the cache quantization's own error (`quant_error`), which widens the tolerance as the
    module docstring says."""
    if rows is None:
        rows = reference_rows(output.shape[0])
        output = output[rows]
    out = output.to(torch.float64)
    ref = reference
    finite_ref = torch.isfinite(ref)
    bad = ~torch.isfinite(out) & finite_ref
    nonfinite = int(bad.sum().item())
    compared, zero = finite_ref & ~bad, torch.zeros((), dtype=torch.float64)
    scale = ref[finite_ref].pow(2).mean().sqrt().clamp_min(1e-300)
    diff = (out - ref).abs().where(compared, zero)
    rel = diff / torch.maximum(ref.abs(), scale)
    if nonfinite:
        flat = int(bad.flatten().nonzero()[0].item())
    else:
        flat = int(rel.flatten().argmax().item())
    where = _locate(flat, ref.shape, rows)
    o_val, r_val = out.flatten()[flat].item(), ref.flatten()[flat].item()
    o_fin, r_fin = out.where(compared, zero), ref.where(compared, zero)
    # |o - r|^2 / (|o|^2 + |r|^2), not 1 - 2<o, r> / (...): the same number, but 1 minus a ratio
    # near 1 cannot resolve less than float64's eps (2.2e-16), far above a float64 row's tolerance.
    cos = diff.pow(2).sum() / (o_fin.pow(2).sum() + r_fin.pow(2).sum()).clamp_min(1e-300)
    return Accuracy(
        max_abs_err=float(diff.max().item()) if not nonfinite else float("inf"),
        rel_err=float(rel.max().item()) if not nonfinite else float("inf"),
        cos_diff=float(cos.item()) if not nonfinite else float("inf"),
        tolerance=quant_tolerances(dtype, quant)[0],
        cos_tolerance=quant_tolerances(dtype, quant)[1],
        nonfinite=nonfinite,
        worst=f"worst at {where}: got {o_val:.6g}, want {r_val:.6g}",
    )


def quant_error(dequantized: Tensor, unquantized: Tensor, batch: int, dtype: str) -> Accuracy:
    """What an FP8 cache alone costs: the float64 reference on the dequantized cache against the
    one on the unquantized cache (both of the `reference_rows` of a `batch`)."""
    return compare(dequantized, unquantized, dtype, rows=reference_rows(batch))


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
