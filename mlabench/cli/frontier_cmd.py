"""`mlabench frontier`: attention tokens per second per GPU against context, each point measured at
the largest batch whose KV cache fits a memory budget.

Thin: the flags become a shape and a plan (`mlabench.frontier.plan`), the plan an ordinary suite
run by the sweep machinery (progress, resume, rounds, executors, report), and the end of the run
the frontier table (`mlabench.frontier.table`). Defaults follow the device: a GPU box plans
deepseek-v3 in 80 GiB over 4K-128K tokens; a CPU plans `tiny` in 32 MiB over 256-2048 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mlabench.cli.common import JsonOpt, parse_bytes, split_list
from mlabench.cli.flags import ExecutorFlags, MeasureFlags, close_executor, with_flag_groups
from mlabench.errors import UsageError

# (model, memory, contexts, max batch) when the flags leave them out, by device type.
DEFAULTS = {"cuda": ("deepseek-v3", "80GiB", "4096,8192,16384,32768,65536,131072", 256),
            "cpu": ("tiny", "32MiB", "256,512,1024,2048", 64)}


def _opt(help: str, metavar: str, **kw: Any) -> Any:
    return typer.Option(help=help, metavar=metavar, show_default=False, **kw)


@dataclass
class FrontierRequest:
    """The model, its cache and the budget the batch must fit."""

    model: Annotated[str | None, _opt("Model preset [default: deepseek-v3 on a GPU, tiny on a CPU].", "NAME")] = None
    memory: Annotated[str | None, _opt("One GPU's memory, e.g. 80GiB [default: 80GiB on a GPU, 32MiB on a CPU].",
                                       "SIZE")] = None
    reserve: Annotated[str, _opt("Memory held back for weights, activations and workspace, e.g. 40GiB "
                                 "[default: 0].", "SIZE")] = "0"
    context: Annotated[str | None, _opt("Context lengths in tokens, comma-separated [default: 4096 to 131072 on a "
                                        "GPU, 256 to 2048 on a CPU].", "LIST")] = None
    max_batch: Annotated[int | None, _opt("Cap on the planned batch [default: 256 on a GPU, 64 on a CPU].",
                                          "N")] = None
    variant: Annotated[str | None, _opt("Variants, comma-separated [default: every one the model can decode].",
                                        "LIST")] = None
    backend: Annotated[str | None, _opt("Backends, comma-separated; the fastest ok one gives each point's figure "
                                        "[default: eager on a CPU; on a GPU the fused ones, eager where none "
                                        "serves a variant].", "LIST")] = None
    kv_dtype: Annotated[str, _opt("What the cache stores: auto (the compute dtype), fp8_e4m3, fp8_e5m2.",
                                  "DTYPE")] = "auto"
    cache_layout: Annotated[str, _opt("contiguous, or paged[:PAGE_SIZE] (each sequence holds whole pages).",
                                      "LAYOUT")] = "contiguous"
    tp: Annotated[int, _opt("Tensor-parallel degree: --memory is one GPU's, and the tp GPUs serve the batch "
                            "together.", "N")] = 1


@dataclass
class FrontierTarget:
    """Where it runs and what it writes."""

    device: Annotated[str, _opt("Device: auto, cpu, cuda or cuda:N.", "DEVICE")] = "auto"
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory [default: results/runs/<UTC "
                                             "time>-frontier-<device>].", metavar="DIR", show_default=False)] = None
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False
    rounds: Annotated[int | None, _opt("Run the points this many times [default: 1].", "N")] = None
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and an estimated run time; "
                                                            "nothing runs.")] = False
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html in the run "
                                                                      "directory.")] = True
    as_json: JsonOpt = False


def _reserve(text: str) -> int:
    return 0 if text.strip().lower() in ("0", "0b", "") else parse_bytes("--reserve", text)


def _plan(request: FrontierRequest, dev: Any) -> Any:
    from mlabench.backends import BACKENDS
    from mlabench.config import ShapeError, canonical_kv_dtype, from_name
    from mlabench.frontier.plan import plan_frontier
    from mlabench.layout import parse_layout

    model, memory, contexts, cap = DEFAULTS["cuda" if dev.type == "cuda" else "cpu"]
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    try:
        shape = from_name(request.model or model, dtype=dtype, kv_dtype=canonical_kv_dtype(request.kv_dtype, dtype))
    except ShapeError as exc:
        raise UsageError(f"--{'model' if exc.field == 'model' else 'kv-dtype'}: {exc}") from None
    try:
        page_size = parse_layout(request.cache_layout).page_size
    except UsageError as exc:
        raise UsageError(f"--{str(exc).replace('cache_layout', 'cache-layout', 1)}") from None
    backends = split_list("--backend", request.backend) or \
        (["eager"] if dev.type == "cpu" else [b for b in BACKENDS if b not in ("eager", "compiled")] + ["eager"])
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"--backend: unknown backend {unknown[0]!r} (choose from {', '.join(BACKENDS)})")
    plan = plan_frontier(shape, request.model or model, split_list("--context", request.context or contexts, int),
                         parse_bytes("--memory", request.memory or memory), _reserve(request.reserve),
                         request.max_batch or cap, split_list("--variant", request.variant), request.tp, page_size,
                         backends)
    if request.backend is None and dev.type == "cuda":  # eager only where no fused backend serves the variant
        from dataclasses import replace

        plan = replace(plan, points=tuple(replace(p, backends=tuple(b for b in p.backends if b != "eager") or
                                                  p.backends) for p in plan.points))
    return plan


@with_flag_groups
def frontier(request: FrontierRequest, target: FrontierTarget, measure: MeasureFlags, where: ExecutorFlags) -> None:
    """Attention tokens per second per GPU against context, at the largest batch whose KV cache fits a memory
    budget: the capacity plan (as `mlabench kv`) measured one decode step of one layer at a time."""
    from mlabench.executors.choice import make_executor

    if target.resume and target.out is None:
        raise UsageError("--resume needs --out DIR (the run directory to continue)")
    runner = None  # until made: close_executor then stops a Ray instance started early
    try:
        if not target.dry_run:
            where.start_ray_early()
        from mlabench import sweep as sweep_lib
        from mlabench.cli import sweep_view
        from mlabench.cli.frontier_view import print_plan, summary_printer
        from mlabench.executors.local import LocalExecutor
        from mlabench.frontier.plan import frontier_suite

        settings = measure.settings(rounds=target.rounds)
        runner = LocalExecutor() if target.dry_run else \
            make_executor(where.chosen(), where.ray_address, where.ray_accelerator, sweep_lib.run_case)
        dev = sweep_view.dry_run_device(target.device) if target.dry_run else runner.resolve_device(target.device)
        plan = _plan(request, dev)
        swept = sweep_lib.plan_sweep(frontier_suite(plan), dev, sweep_lib.Overrides(settings=settings), target.out)
        if target.dry_run:
            print_plan(plan, target.as_json, swept)
            return
        runner.describe(swept, measure.probe)
        opened = sweep_lib.open_run(swept, target.resume, runner.device_meta)
        plan.write(swept.out_dir)  # beside the rows, before any case, so a cut run's report still draws
    except BaseException:
        close_executor(runner)
        raise
    print_plan(plan, False, None)
    sweep_view.announce_plan(swept, dev, None)
    sweep_view.run_and_finish(swept, opened, runner, None, target.resume, measure.probe, target.report,
                              target.as_json, target.out is not None, summary_printer(plan))


__all__ = ["DEFAULTS", "frontier"]
