"""Timing scope: which callable a case times, and the float64 reference its output is checked against.

- `step`: the backend's whole layer step, `Prepared.fn`, against the float64 eager step
  of the same weights, cache and input (accuracy.reference_output).
- `core`: the backend's attention core alone (`Prepared.core`) on the tensors the variant
  hands its core for this step (`module.core_inputs`, called once, outside the timed
  calls: it writes the step's cache rows, so the cache the core reads is exactly the one
  the step's core would read), against the float64 eager core on the same tensors.

FP8 caches: in scope `step` the reference holds the unquantized cache and `quant_reference`
the dequantized one (their difference is the row's `quant_err`). In scope `core` the core's
inputs already are the stored cache (a fused core's FP8 bytes are dequantized for the
reference), so the check there is of the core alone, with no `quant_err`.
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
from mlabench.variants.attention import CoreAttention, chunked_attention
from mlabench.variants.base import AttentionVariant


@dataclass(frozen=True)
class ScopedCall:
    fn: Callable[[], Tensor]  # the timed call
    reference: Callable[[], Tensor]  # float64 output of fn for the accuracy.reference_rows sequences
    # An FP8 cache's float64 reference on the dequantized cache (None: no quant_err for this row)
    quant_reference: Callable[[], Tensor] | None = None


def scoped_call(case: Case, module: AttentionVariant, prepared: Prepared, inputs: StepInputs) -> ScopedCall:
    x, start = inputs.x, inputs.start_pos
    if case.scope == "step":
        quant = (lambda: acc.reference_output(module, x, start, unquantized=False)) if module.kv_store else None
        return ScopedCall(prepared.fn, lambda: acc.reference_output(module, x, start), quant)
    if case.scope != "core":
        raise ValueError(f"unknown timing scope {case.scope!r}")
    core = prepared.core
    if core is None:
        raise UnsupportedError(f"{case.backend} has no attention core to time alone (scope core)")
    with torch.no_grad():
        q, k, v, scale, causal = module.core_inputs(x, start)
    lengths = module.step_lengths(x.shape[0], start, x.shape[1])  # a ragged step's, else None
    kw = {} if lengths is None else {"lengths": lengths}
    reference_core = chunked_attention if module.generic_core else module.native_core
    ref_k, ref_v = k, v
    if module.read_pages_in_core and module.cache_map is not None and module.cache_map.page_size:
        # A fused latent kernel on a paged cache gets the page pool itself (mla-absorbed's
        # `read_pages_in_core`); the reference reads the same tokens gathered in order.
        ref_k = module.cache_map.read(k.squeeze(2), q.shape[0], start + x.shape[1])[:, :, None, :]
        ref_v = ref_k[..., : v.shape[-1]]
    if k.dtype == torch.uint8:  # a fused core's FP8 latent rows: its reference reads them dequantized
        def reference() -> Tensor:
            latent = module.kv_store.decode(ref_k.squeeze(2), torch.float64)[:, :, None, :]  # (B, T, 1, d_c + d_r)
            return core_reference(q, latent, latent[..., : v.shape[-1]], scale, causal, reference_core, lengths)
        return ScopedCall(lambda: core(q, k, v, scale, causal, **kw), reference)
    return ScopedCall(lambda: core(q, k, v, scale, causal, **kw),
                      lambda: core_reference(q, ref_k, ref_v, scale, causal, reference_core, lengths))


@torch.no_grad()
def core_reference(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                   core: CoreAttention = chunked_attention, lengths: Tensor | None = None) -> Tensor:
    """float64 eager core on the `accuracy.reference_rows` (first and last sequence) of the core's inputs."""
    rows = torch.tensor(acc.reference_rows(q.shape[0]), device=q.device)
    q64, k64, v64 = (t.index_select(0, rows).to(torch.float64) for t in (q, k, v))
    if isinstance(causal, Tensor):
        causal = causal.index_select(0, rows)  # an explicit (B, S, T) mask follows its sequences
    if lengths is None:
        return core(q64, k64, v64, scale, causal)
    return core(q64, k64, v64, scale, causal, lengths=lengths.index_select(0, rows))
