"""`mlabench sweep`: run a suite's grid on one device into a run directory.

Thin: read the flag groups, plan (every check before any work), lock and check the run
directory, then hand over to `sweep_view` for progress, report and summary. Exit 0 all
good, 1 a case failed (oom, error, inaccurate, timeout), 2 bad input, 3 `--resume` of a
run measured differently, 130 interrupted by Ctrl-C and 143 by SIGTERM (rows kept either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mlabench.cli.common import JsonOpt, SetOpt, check_set_fields, parse_assignments, split_list, split_seq_lens
from mlabench.cli.flags import BackendFlags, ExecutorFlags, MeasureFlags, ProfileFlags, close_executor, with_flag_groups
from mlabench.errors import UsageError


def _axis(what: str) -> Any:
    return typer.Option(help=f"{what}, comma-separated; replaces the suite's axis.", metavar="LIST",
                        show_default=False)


@dataclass
class SweepTarget:
    """What to sweep, on which device, into which run directory."""

    suite: Annotated[str, typer.Option(help="Suite name (see `mlabench list`) or path to a .toml file.",
                                       metavar="NAME|PATH")] = "smoke"
    device: Annotated[str, typer.Option(help="Device: auto (the best one present), cpu, cuda or cuda:N.",
                                        metavar="DEVICE")] = "auto"
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory [default: results/runs/<UTC "
                                             "time>-<suite>-<device>].", metavar="DIR", show_default=False)] = None
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out, skipping finished "
                                                          "cases.")] = False
    shard: Annotated[str | None, typer.Option(help="Run the K-th of N deterministic slices of the grid, e.g. 2/4; "
                                                   "auto: this Slurm array task's slice.", metavar="K/N",
                                              show_default=False)] = None
    rounds: Annotated[int | None, typer.Option(help="Run the case list this many times, each round in its own "
                                               "seeded order; compare tests on the rounds [default: the suite's, "
                                               "else 1].", metavar="N", show_default=False)] = None
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the case count, an estimated run time and the "
                                                            "cases, then exit; nothing runs, no run "
                                                            "directory.")] = False
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html in the run "
                                                                      "directory.")] = True
    as_json: JsonOpt = False


@dataclass
class SweepAxes:
    """Axes that replace the suite's (each a comma-separated list), and --set for any other."""

    model: Annotated[str | None, _axis("Model presets (see `mlabench list`)")] = None
    variant: Annotated[str | None, _axis("Attention variants, e.g. mha,mla-absorbed")] = None
    backend: Annotated[str | None, _axis("Backends, e.g. eager,sdpa")] = None
    mode: Annotated[str | None, _axis("Modes: prefill, decode")] = None
    batch: Annotated[str | None, _axis("Batch sizes, e.g. 1,8")] = None
    seq_len: Annotated[str | None, _axis(
        "Context lengths, e.g. 1024,4096, or a ragged batch's distribution: uniform:1024-32768, "
        "lognormal:median=4096,sigma=1, list:900/4096")] = None
    q_len: Annotated[str | None, _axis("New tokens per decode step")] = None
    dtype: Annotated[str | None, _axis("Dtypes: auto, bfloat16, float16, float32")] = None
    kv_dtype: Annotated[str | None, _axis("What the cache stores: auto (the compute dtype), fp8_e4m3, "
                                          "fp8_e5m2")] = None
    cache_layout: Annotated[str | None, _axis("Cache layouts: contiguous, paged (64-token pages), "
                                              "paged:PAGE_SIZE")] = None
    kv_lora_rank: Annotated[str | None, _axis("Latent ranks (MLA d_c, lowrank-kv r, linformer k)")] = None
    num_kv_heads: Annotated[str | None, _axis("KV head counts (GQA groups)")] = None
    tp: Annotated[str | None, _axis("Tensor-parallel degrees: each case runs on that many ranks (processes on "
                                    "the CPU, GPUs on CUDA), e.g. 1,2,4; each must divide num_heads, and divide "
                                    "or be a multiple of the KV groups")] = None
    scope: Annotated[str | None, typer.Option(
        help="Timing scope: step (the whole layer), core (the attention core alone), or both: step,core.",
        metavar="LIST", show_default=False)] = None
    assignments: SetOpt = None

    def overrides(self) -> dict[str, list[Any]]:
        """Each given axis as a list, --set's fields among them; a field given twice is refused."""
        out: dict[str, list[Any]] = {}
        for name, text in vars(self).items():
            if name == "assignments" or text is None:
                continue
            flag = f"--{name.replace('_', '-')}"
            kind = int if name in ("batch", "q_len", "kv_lora_rank", "num_kv_heads", "tp") else str
            out[name] = split_seq_lens(flag, text) if name == "seq_len" else split_list(flag, text, kind)
        return {**out, **check_set_fields(parse_assignments(self.assignments), given=out)}


@with_flag_groups
def sweep(target: SweepTarget, axes: SweepAxes, measure: MeasureFlags, backend_options: BackendFlags,
          profiling: ProfileFlags, where: ExecutorFlags) -> None:
    """Sweep a suite's grid (sequence length, batch, latent rank, ...) and record every case."""
    from mlabench.executors.choice import make_executor

    if target.resume and target.out is None:
        raise UsageError("--resume needs --out DIR (the run directory to continue)")
    executor = where.chosen()
    runner = None  # until made: close_executor then stops a Ray instance started early
    try:
        if not target.dry_run:
            where.start_ray_early()
        from mlabench import sweep as sweep_lib
        from mlabench.cli import sweep_view
        from mlabench.executors.local import LocalExecutor
        from mlabench.executors.slurm import slurm_shard
        from mlabench.profiling.request import check_request
        from mlabench.suites import load_suite, parse_shard

        settings = measure.settings(rounds=target.rounds)
        shard = (slurm_shard() if target.shard == "auto" else parse_shard(target.shard)) if target.shard else None
        suite = load_suite(target.suite)
        overrides = sweep_lib.Overrides(axes.overrides(), settings, backend_options.options())
        request = profiling.request()
        # A dry run connects to nothing: it plans for the named device kind here.
        runner = LocalExecutor() if target.dry_run else \
            make_executor(executor, where.ray_address, where.ray_accelerator, sweep_lib.run_case)
        dev = sweep_view.dry_run_device(target.device) if target.dry_run else runner.resolve_device(target.device)
        plan = sweep_lib.plan_sweep(suite, dev, overrides, target.out, shard)
        check_request(request, plan.cases)
        if target.dry_run:
            sweep_view.print_estimate(plan, target.as_json)
            return
        runner.describe(plan, measure.probe)  # Ray: the fingerprint and peaks of the cases' device, on a worker
        # Locks and checks the directory: the last refusal comes before any output.
        opened = sweep_lib.open_run(plan, target.resume, runner.device_meta)
    except BaseException:
        close_executor(runner)  # a local Ray instance started for this run
        raise
    sweep_view.announce_plan(plan, dev, request)
    sweep_view.run_and_finish(plan, opened, runner, request, target.resume, measure.probe, target.report,
                              target.as_json, target.out is not None)
