"""What the ranks of one tensor-parallel case do together: agree on a failure, and time a call
on every rank at once.

A rank that fails alone would leave the others waiting in their next collective, so every
stage that can fail (building, sharding, preparing a backend) ends in `agree`: each rank
learns every rank's exception and all raise the first one, and the case's row says why.

Timing: every sample starts on all ranks together (a barrier) and a sample's latency is the
slowest rank's, since the step is not over until its all-reduce has every rank's part. The
number of warm-up calls and samples is decided on rank 0 and shared, so that every rank makes
the same calls and the collectives inside them pair up.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

MAX_WARMUP_CALLS = 100


def agree(stage: Callable[[], T]) -> T:
    """Run `stage` on every rank; if any rank raised, raise the first failing rank's exception
    on all of them (each then writes the same row)."""
    failure: BaseException | None = None
    result: T | None = None
    try:
        result = stage()
    except Exception as exc:  # shared below; KeyboardInterrupt ends the rank
        failure = _portable(exc)
    failures: list[BaseException | None] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    first = next((f for f in failures if f is not None), None)
    if first is not None:
        raise first
    return result  # type: ignore[return-value]


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (it crosses to the other ranks), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slowest(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of `values` over the ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def shared_count(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def timed_together(fn: Callable[[], object], calls: int, device: torch.device) -> list[float]:
    """`calls` samples (ms) of `fn`, each started on all ranks at a barrier; each sample is the
    slowest rank's."""
    own = []
    for _ in range(calls):
        dist.barrier()
        start = time.perf_counter()
        fn()
        _sync(device)
        own.append((time.perf_counter() - start) * 1e3)
    return slowest(own, device)


def plan_calls(first_ms: float, warmup_s: float, budget_s: float, min_samples: int, max_samples: int,
               device: torch.device) -> tuple[int, int]:
    """(warm-up calls, samples) from one call's time, rank 0's figures on every rank."""
    per_call = max(first_ms, 1e-3) * 1e-3
    warmup = min(max(math.ceil(warmup_s / per_call), 1), MAX_WARMUP_CALLS)
    samples = min(max(math.ceil(budget_s / per_call), min_samples), max_samples)
    return shared_count(warmup, device), shared_count(samples, device)
