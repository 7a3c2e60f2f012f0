"""One rank's part of a tensor-parallel case: its shard, its cache, its timed steps.

Every rank of the process group runs `measure_sharded` on the same case (through
`runner.run_case`, so its row is built as every other row is); rank 0's row is the case's.
Each rank builds the full layer on the CPU from the case's seed and fills its cache there, so
every rank starts from the same weights and context whatever its device, keeps its shard
(`shard.py`), and runs one step: its part of the output, then one all-reduce (the sum over
the ranks is the layer's output, o_proj being row-parallel).

Recorded from the ranks: `kv_cache_bytes_per_gpu_measured`, the largest rank's cache tensors
(an ok row's equals the analytic `kv_cache_bytes_per_gpu`: a disagreement is the row's
error); the step's latency, the slowest rank's per sample; `comm_ms`, the all-reduce of one
step's output alone, timed the same way, and its share of the step; the combined output's
accuracy against the unsharded layer's float64 reference (rank 0). `params` counts the full
layer, as on every other row.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from mlabench.backends import BACKENDS, StepInputs
from mlabench.case import Case
from mlabench.errors import UnsupportedError
from mlabench.measure import accuracy as acc
from mlabench.measure.memory import measure_allocation
from mlabench.measure.timing import check_deadline
from mlabench.profiling.case import ProfileResult
from mlabench.runner import RunContext, check_accuracy, summarize_samples
from mlabench.tp.collective import agree, plan_calls, slowest, timed_together
from mlabench.tp.shard import shard_cache, shard_module, shard_rule
from mlabench.variants import build_variant
from mlabench.variants.base import AttentionVariant
from mlabench.variants.registry import torch_dtype, variant_class

CPU = torch.device("cpu")


@dataclasses.dataclass
class _Built:
    full: AttentionVariant  # the unsharded layer on the CPU: rank 0 checks the output against it
    local: AttentionVariant
    x: torch.Tensor
    fn: Any  # one step of this rank's shard, without the all-reduce
    detail: str


def _refuse(case: Case) -> None:
    if case.scope != "step":
        raise UnsupportedError("a tensor-parallel case is timed as a whole step: its all-reduce follows the "
                               "output projection, outside the attention core")
    if case.context or case.cache_layout:
        raise UnsupportedError("ragged and paged caches are not sharded (one contiguous cache per rank)")
    shard_rule(variant_class(case.variant))


def _build(case: Case, ctx: RunContext, rank: int, world: int) -> _Built:
    _refuse(case)
    sh, step = case.shape, case.step
    dtype = torch_dtype(case.dtype)
    full = build_variant(case.variant, sh, CPU, dtype, seed=ctx.seed)
    full.allocate_cache(case.batch, case.seq_len)
    if step.context:
        full.fill_cache_random(step.context, seed=ctx.seed + 1)
    local = shard_module(full, rank, world, ctx.device)
    local.prepare_length(case.seq_len)  # RoPE tables first: the measured allocation is the cache alone
    return _Built(full, local, torch.empty(0), None, "")


def _prepare(case: Case, ctx: RunContext, built: _Built) -> None:
    step, sh = case.step, case.shape
    gen = torch.Generator().manual_seed(ctx.seed + 1)  # the input every rank, and the unsharded case, gets
    built.x = torch.randn(case.batch, step.new_tokens, sh.hidden_size, generator=gen).to(ctx.device,
                                                                                     torch_dtype(case.dtype))
    built.local.cache_map.prepare_step(case.batch, step.context, step.new_tokens)
    local_case = dataclasses.replace(case, shape=built.local.shape, tp=1)
    prepared = BACKENDS[case.backend].prepare(built.local, local_case, StepInputs(x=built.x, start_pos=step.context))
    built.fn, built.detail = prepared.fn, prepared.detail


def measure_sharded(case: Case, ctx: RunContext, row: dict[str, Any], profiled: list[ProfileResult]) -> list[float]:
    """`runner.Measure` for one rank of a tensor-parallel case (see the module docstring)."""
    deadline = time.perf_counter() + ctx.timeout_s
    rank, world, device = dist.get_rank(), dist.get_world_size(), ctx.device
    if world != case.tp:
        raise RuntimeError(f"a tp = {case.tp} case reached a group of {world} ranks")
    built = agree(lambda: _build(case, ctx, rank, world))
    row["params"] = sum(p.numel() for p in built.full.parameters())
    delta = agree(lambda: measure_allocation(lambda: shard_cache(built.full, built.local, rank, world), device,
                                             ctx.nvml))
    own = built.local.cache_nbytes()
    per_gpu = int(slowest([float(own)], device)[0])  # the largest rank's share
    row.update(kv_cache_bytes_per_gpu_measured=per_gpu, kv_cache_bytes_allocator=delta.allocator,
               kv_cache_bytes_nvml=delta.nvml, threads=ctx.timing.threads or torch.get_num_threads()
               if device.type == "cpu" else None)
    if per_gpu != row["kv_cache_bytes_per_gpu"]:
        raise RuntimeError(f"one rank's cache tensors hold {per_gpu:,} B where the per-GPU formula says "
                           f"{row['kv_cache_bytes_per_gpu']:,} B")
    agree(lambda: _prepare(case, ctx, built))
    row["backend_detail"] = f"{built.detail} x{world} {case.dist_backend}".strip()
    agree(lambda: check_deadline(deadline, "setup"))  # together: a rank leaving alone would strand the others

    def step() -> torch.Tensor:
        y = built.fn()
        dist.all_reduce(y)
        return y

    started = time.perf_counter()
    out = step()
    first_ms = slowest([(time.perf_counter() - started) * 1e3], device)[0]
    agree(lambda: check_deadline(deadline, "the first call"))
    if ctx.accuracy and rank == 0:
        start = case.step.context
        check_accuracy(case, row, out.to(CPU), lambda: acc.reference_output(built.full, built.x.to(CPU), start), CPU)
    buffer = torch.zeros_like(out)  # the collective alone, on a tensor of the step's output size
    del out
    s = ctx.timing
    warmup, calls = plan_calls(first_ms, s.warmup_s, s.budget_s, s.min_samples, s.max_samples, device)
    timed_together(step, warmup, device)
    samples = timed_together(step, calls, device)
    comm = timed_together(lambda: dist.all_reduce(buffer), calls, device)
    summarize_samples(case, ctx, row, samples)
    comm_ms = statistics.median(comm)
    row.update(comm_ms=comm_ms, comm_share=comm_ms / row["latency_ms"] if row["latency_ms"] else None,
               timer=f"{device.type} perf_counter, slowest of {world} ranks from a barrier",
               sample_calls=1, profiled=0)
    return samples
