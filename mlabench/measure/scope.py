"""Timing scope: which callable a case times, and the float64 reference its output is checked against.

- `step`: the backend's whole layer step, `Prepared.fn`, against the float64 eager step
  of the same weights, cache and input (accuracy.reference_output).
- `core`: the backend's attention core alone (`Prepared.core`) on the tensors the variant
  hands its core for this step (`module.core_inputs`, called once, outside the timed
  calls: it writes the step's cache rows, so the cache the core reads is exactly the one
  the step's core would read), against the float64 eager core on the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mlabench.backends.registry import Prepared, StepInputs
from mlabench.case import Case
from mlabench.errors import UnsupportedError
from mlabench.measure import accuracy as acc
from mlabench.variants.base import AttentionVariant, chunked_attention


@dataclass(frozen=True)
class ScopedCall:
    fn: Callable[[], Tensor]  # the timed call
    reference: Callable[[], Tensor]  # float64 output of fn for the accuracy.reference_rows sequences


def scoped_call(case: Case, module: AttentionVariant, prepared: Prepared, inputs: StepInputs) -> ScopedCall:
    x, start = inputs.x, inputs.start_pos
    if case.scope == "step":
        return ScopedCall(prepared.fn, lambda: acc.reference_output(module, x, start))
    if case.scope != "core":
        raise ValueError(f"unknown timing scope {case.scope!r}")
    core = prepared.core
    if core is None:
        raise UnsupportedError(f"{case.backend} has no attention core to time alone (scope core)")
    with torch.no_grad():
        q, k, v, scale, causal = module.core_inputs(x, start)
    lengths = module.step_lengths(x.shape[0], start, x.shape[1])  # a ragged step's, else None
    kw = {} if lengths is None else {"lengths": lengths}
    ref_k, ref_v = k, v
    if module.read_pages_in_core and module.cache_map is not None and module.cache_map.page_size:
        # A fused latent kernel on a paged cache gets the page pool itself (mla-absorbed's
        # `read_pages_in_core`); the reference reads the same tokens gathered in order.
        ref_k = module.cache_map.read(k.squeeze(2), q.shape[0], start + x.shape[1])[:, :, None, :]
        ref_v = ref_k[..., : v.shape[-1]]
    return ScopedCall(lambda: core(q, k, v, scale, causal, **kw),
                      lambda: core_reference(q, ref_k, ref_v, scale, causal, lengths))


@torch.no_grad()
def core_reference(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                   lengths: Tensor | None = None) -> Tensor:
    """float64 eager core on the `accuracy.reference_rows` (first and last sequence) of the core's inputs."""
    rows = torch.tensor(acc.reference_rows(q.shape[0]), device=q.device)
    q64, k64, v64 = (t.index_select(0, rows).to(torch.float64) for t in (q, k, v))
    return chunked_attention(q64, k64, v64, scale, causal,
                             None if lengths is None else lengths.index_select(0, rows))
