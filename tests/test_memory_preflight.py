"""The CPU memory pre-flight's estimate bounds what a step really allocates.

`runner._preflight` skips a case whose `estimate_case_bytes` exceeds the RAM available, so the
OOM killer never takes the sweep. That only works if the estimate is an upper bound: here every
variant, on the CPU backends that serve it, in prefill and decode, runs one warmed step while a
dispatch mode records the storage of every tensor an operator creates and when it is freed, and
the peak of those bytes must stay within the estimate's part beyond weights and cache
(`step_transient_bytes`); the float64 reference's peak (its weights and cache copies included)
within `reference_bytes`. Contexts of 512 and 2048 tokens make the terms that grow with the
context dominate the ones that do not.
"""

from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mlabench.backends import BACKENDS, StepInputs
from mlabench.case import Case
from mlabench.measure.memory import reference_bytes, step_transient_bytes
from mlabench.measure.scope import scoped_call
from mlabench.suites import load_suite
from mlabench.sweep import Overrides, plan_sweep
from mlabench.variants import build_variant
from mlabench.variants.registry import torch_dtype, variant_class, variant_names

CPU = torch.device("cpu")
BACKEND_NAMES = ("eager", "sdpa")


class PeakNewStorage(TorchDispatchMode):
    """Peak bytes of the storages operators create while the mode is on, alive at once.

    An output sharing a storage with one of the op's inputs (a view, an in-place write into the
    cache) is not new memory; a storage is released when its weak reference expires, which is
    checked before each op's outputs are counted, so the peak is taken at allocation points."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[StorageWeakRef, int] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # the dispatch protocol's signature
        out = func(*args, **(kwargs or {}))
        args_flat = tree_flatten((args, kwargs))[0]
        inputs = {t.untyped_storage().data_ptr() for t in args_flat if isinstance(t, torch.Tensor)}
        self.live = {ref: n for ref, n in self.live.items() if not ref.expired()}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in inputs or storage.nbytes() == 0:
                continue
            ref = StorageWeakRef(storage)
            self.live.setdefault(ref, storage.nbytes())
        self.peak = max(self.peak, sum(self.live.values()))
        return out


def grid_cases() -> list[Case]:
    """The real Case objects a sweep would run: every variant, on eager and sdpa where served."""
    variants = [v for v in variant_names() if any(v in BACKENDS[b].variants for b in BACKEND_NAMES)]
    axes = {"model": ["tiny"], "variant": variants, "backend": list(BACKEND_NAMES), "mode": ["prefill", "decode"],
            "batch": [2], "seq_len": [512, 2048], "q_len": [1], "dtype": ["float32"]}
    plan = plan_sweep(load_suite("smoke"), CPU, Overrides(axes=axes))
    return [c for c in plan.cases if c.variant in BACKENDS[c.backend].variants
            and (c.mode == "prefill" or variant_class(c.variant).supports_decode)
            and (c.backend == "eager" or variant_class(c.variant).generic_core)]


def measured_peaks(case: Case) -> tuple[int, int]:
    """Peak bytes created during one step of `case` (after one warm-up step) and during its float64
    reference, set up as the runner does."""
    sh, step = case.shape, case.step
    module = build_variant(case.variant, sh, CPU, torch_dtype(case.dtype), seed=0)
    module.prepare_length(case.seq_len)
    module.allocate_cache(case.batch, case.seq_len, lengths=case.lengths, page_size=case.layout.page_size,
                          shuffle_seed=0)
    if step.context:
        module.fill_cache_random(step.context, seed=1)
    x = torch.randn(case.batch, step.new_tokens, sh.hidden_size, generator=torch.Generator().manual_seed(1))
    inputs = StepInputs(x=x.to(CPU, torch_dtype(case.dtype)), start_pos=step.context)
    module.cache_map.prepare_step(case.batch, step.context, step.new_tokens)
    prepared = BACKENDS[case.backend].prepare(module, case, inputs)
    prepared.fn()  # warmed: lazily built state (masks, kernel choices) is not the step's
    timed = scoped_call(case, module, prepared, inputs)
    with PeakNewStorage() as step_tracker:
        out = timed.fn()
    del out
    with PeakNewStorage() as reference_tracker:
        ref = timed.reference()
    del ref
    return step_tracker.peak, reference_tracker.peak


CASES = grid_cases()


def test_the_grid_covers_every_variant_in_both_modes() -> None:
    assert {c.variant for c in CASES} == set(variant_names())
    assert {(c.backend, c.mode, c.seq_len) for c in CASES} == {
        (b, m, t) for b in BACKEND_NAMES for m in ("prefill", "decode") for t in (512, 2048)}


def test_the_tracker_sees_a_temporary_and_its_release() -> None:
    a = torch.randn(256, 256)
    with PeakNewStorage() as tracker:
        b = a @ a  # 256 KiB, alive
        c = (b * 2).sum()  # another 256 KiB while b lives, then a scalar
        del b
        d = a + 1  # reuses the room b left: the peak stays at two matrices
    assert tracker.peak == 2 * a.nbytes + c.nbytes
    assert d.shape == a.shape


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.variant}-{c.backend}-{c.mode}-T{c.seq_len}")
def test_the_preflight_estimate_bounds_the_steps_peak(case: Case) -> None:
    step, reference = measured_peaks(case)
    assert step > 0 and reference > 0
    estimate = step_transient_bytes(case)
    assert estimate >= step, f"step: estimate {estimate} B < measured {step} B"
    estimate = reference_bytes(case)
    assert estimate >= reference, f"reference: estimate {estimate} B < measured {reference} B"
