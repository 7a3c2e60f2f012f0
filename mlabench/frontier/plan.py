"""Planning the frontier: B_max(T) per variant from the capacity model, and the suite that measures it.

B_max(T) is `mlabench.capacity.max_batch` on one GPU's budget (memory minus the reserve): the
whole model's cache (L layers, per-GPU bytes at degree tp, whole pages on a paged layout, the
cache dtype's scales) of B sequences of T tokens must fit. The measured case is one decode step
(q_len 1, step scope) of one layer at (B_max, T): an ordinary case of an ordinary suite, with one
grid per point so each point keeps its own batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlabench import capacity
from mlabench.backends import served_variants
from mlabench.config import AttentionShape
from mlabench.errors import UsageError
from mlabench.frontier import FRONTIER_SUITE
from mlabench.frontier.record import FrontierPlan, FrontierPoint
from mlabench.suites import Suite
from mlabench.variants import VARIANT_CLASSES

# A point's measurement: few samples, since every point reads about the same bytes (the budget
# over L) and the frontier's message is in ratios of tens of percent; `--budget` etc. override.
SETTINGS = {"budget_s": 0.25, "warmup_s": 0.05, "min_samples": 5, "max_samples": 50}


def decode_variants(shape: AttentionShape, tp: int = 1) -> list[str]:
    """Every variant the shape serves with a per-token cache and an incremental decode, a special
    case of another listed once (gqa with G = H is mha), as `mlabench kv` lists them."""
    rows = capacity.plan_capacity(shape, None, tp=tp)
    return [r.variant for r in rows if VARIANT_CLASSES[r.variant].supports_decode]


def _point(variant: str, shape: AttentionShape, context: int, budget: int, cap: int, tp: int, page_size: int,
           backends: Sequence[str], served: dict[str, tuple[str, ...]]) -> FrontierPoint:
    cost = capacity.footprint(variant, shape, tp, page_size)
    fits = cost.max_batch(context, budget)
    b_max = min(fits, cap)
    serving = tuple(b for b in backends if variant in served.get(b, ()))
    reason = ""
    if b_max == 0:
        reason = f"one sequence of {context:,} tokens needs {cost.bytes(1, context):,} B per GPU, over the " \
                 f"{budget:,} B budget"
    elif not serving:
        reason = f"none of the backends {', '.join(backends)} serves {variant}"
    return FrontierPoint(variant=variant, context=context, max_batch=b_max, capped=fits > cap,
                         kv_bytes_per_gpu=cost.bytes(b_max, context) if b_max else 0, backends=serving, reason=reason)


def plan_frontier(shape: AttentionShape, model: str, contexts: Sequence[int], memory: int, reserve: int = 0,
                  max_batch: int = 256, variants: Sequence[str] | None = None, tp: int = 1, page_size: int = 0,
                  backends: Sequence[str] = ("eager",)) -> FrontierPlan:
    """The points of a frontier; UsageError (naming the flag) for a request that plans nothing."""
    if memory <= 0:
        raise UsageError(f"--memory: must be positive, got {memory:,} B")
    if not 0 <= reserve < memory:
        raise UsageError(f"--reserve: must be at least 0 and below --memory ({memory:,} B), got {reserve:,} B")
    if max_batch < 1:
        raise UsageError(f"--max-batch: must be a positive integer, got {max_batch}")
    if not contexts or any(t < 1 for t in contexts):
        raise UsageError(f"--context: give positive token counts, got {list(contexts)}")
    contexts = sorted(set(contexts))
    try:
        names = list(variants) if variants else decode_variants(shape, tp)
        capacity.plan_capacity(shape, names, tp=tp)  # names, tp splits and per-token caches, checked once
    except capacity.CapacityError as exc:
        raise UsageError(f"--{exc.param.replace('_', '-')}{str(exc)[len(exc.param):]}") from None
    no_decode = [v for v in names if not VARIANT_CLASSES[v].supports_decode]
    if no_decode:
        raise UsageError(f"--variant: {', '.join(no_decode)} has no incremental decode, so no serving frontier")
    budget, served = memory - reserve, served_variants()
    points = tuple(_point(v, shape, t, budget, max_batch, tp, page_size, backends, served)
                   for v in names for t in contexts)
    if not any(p.max_batch for p in points if p.context == contexts[0]):
        smallest = min(capacity.footprint(v, shape, tp, page_size).bytes(1, contexts[0]) for v in names)
        raise UsageError(f"--memory: a KV budget of {budget:,} B per GPU (--memory less --reserve) fits not even one "
                         f"sequence of {contexts[0]:,} tokens; the smallest cache needs {smallest:,} B")
    if not any(p.measured for p in points):
        raise UsageError(f"--backend: none of {', '.join(backends)} serves any of {', '.join(names)}")
    return FrontierPlan(model=model, dtype=shape.dtype, kv_dtype=shape.cache_dtype, layers=shape.num_layers, tp=tp,
                        cache_layout=f"paged:{page_size}" if page_size else "", memory_bytes=memory,
                        reserve_bytes=reserve, max_batch=max_batch, contexts=tuple(contexts), points=points)


def frontier_suite(plan: FrontierPlan) -> Suite:
    """The measured points as a suite: one grid per point, decode, one new token, the step timed."""
    grids = tuple({"model": [plan.model], "variant": [p.variant], "backend": list(p.backends), "mode": ["decode"],
                   "batch": [p.max_batch], "seq_len": [p.context], "q_len": [1], "dtype": [plan.dtype],
                   "kv_dtype": [plan.kv_dtype], "scope": ["step"], "cache_layout": [plan.cache_layout or "contiguous"],
                   "tp": [plan.tp]}
                  for p in plan.points if p.measured)
    description = (f"serving frontier of {plan.model}: decode at the largest batch whose KV cache fits "
                   f"{plan.budget_bytes:,} B per GPU")
    return Suite(FRONTIER_SUITE, description, "", grids, dict(SETTINGS))  # the command line overrides them


__all__ = ["SETTINGS", "decode_variants", "frontier_suite", "plan_frontier"]
