"""`mlabench sweep`: run a suite's grid on one device into a run directory.

Thin: parse flags, plan (every check before any work), run with a rich progress
bar on stderr, write the report, print the summary. Exit 0 all good, 1 a case
failed (oom, error, inaccurate), 2 bad input, 130 interrupted (rows kept).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from mlabench.cli.common import err_console, parse_assignments, split_list, write_report_or_warn
from mlabench.errors import UsageError

Axis = Annotated[str | None, typer.Option(show_default=False)]


def collect_overrides(model: str | None, variant: str | None, backend: str | None, mode: str | None,
                      batch: str | None, seq_len: str | None, q_len: str | None, dtype: str | None,
                      kv_lora_rank: str | None, num_kv_heads: str | None, assignments: list[str] | None
                      ) -> dict[str, list[Any]]:
    """Command-line axis overrides, each replacing the suite's whole axis."""
    axes: dict[str, list[Any] | None] = {
        "model": split_list("--model", model),
        "variant": split_list("--variant", variant),
        "backend": split_list("--backend", backend),
        "mode": split_list("--mode", mode),
        "batch": split_list("--batch", batch, int),
        "seq_len": split_list("--seq-len", seq_len, int),
        "q_len": split_list("--q-len", q_len, int),
        "dtype": split_list("--dtype", dtype),
        "kv_lora_rank": split_list("--kv-lora-rank", kv_lora_rank, int),
        "num_kv_heads": split_list("--num-kv-heads", num_kv_heads, int),
    }
    out = {k: v for k, v in axes.items() if v is not None}
    out.update(parse_assignments(assignments))
    return out


def sweep(
    suite: Annotated[str, typer.Option(help="Suite name (see `mlabench list`) or path to a .toml file.")] = "smoke",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run directory [default: results/runs/<UTC time>-<suite>-<device>].",
                                             show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume",
                                         help="Continue the run in --out, skipping finished cases.")] = False,
    shard: Annotated[str | None, typer.Option(help="Run the K-th of N deterministic slices of the grid, e.g. 2/4.",
                                              show_default=False)] = None,
    model: Axis = None,
    variant: Axis = None,
    backend: Axis = None,
    mode: Axis = None,
    batch: Axis = None,
    seq_len: Axis = None,
    q_len: Axis = None,
    dtype: Axis = None,
    kv_lora_rank: Axis = None,
    num_kv_heads: Axis = None,
    assignments: Annotated[list[str] | None, typer.Option(
        "--set", help="Override any shape field as an axis: --set rope_theta=1e6 (repeatable).")] = None,
    budget: Annotated[float | None, typer.Option(help="Seconds of sampling per case [suite's, else 0.5].",
                                                 show_default=False)] = None,
    warmup: Annotated[float | None, typer.Option(help="Seconds of warm-up per case.", show_default=False)] = None,
    min_samples: Annotated[int | None, typer.Option(help="Fewest samples per case.", show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (0 = torch default).", show_default=False)] = None,
    cuda_graph: Annotated[bool | None, typer.Option("--cuda-graph/--no-cuda-graph",
                                                    help="GPU: time inside a CUDA graph (hot).",
                                                    show_default=False)] = None,
    accuracy: Annotated[bool | None, typer.Option("--accuracy/--no-accuracy",
                                                  help="Check every case against the float64 reference.",
                                                  show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights and inputs.", show_default=False)] = None,
    rounds: Annotated[int | None, typer.Option(help="Run the case list this many times, each round in its own "
                                               "seeded order; compare tests on the rounds [suite's, else 1].",
                                               show_default=False)] = None,
    compile_mode: Annotated[str | None, typer.Option(help="torch.compile mode for the compiled backend.",
                                                     show_default=False)] = None,
    sdpa_kernel: Annotated[str | None, typer.Option(help="SDPA kernel: auto, flash, efficient, cudnn, math.",
                                                    show_default=False)] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Measure roofline peaks first.")] = True,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html at the end.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Sweep a suite's grid (sequence length, batch, latent rank, ...) and record every case."""
    from mlabench.measure.envinfo import resolve_device
    from mlabench.suites import check_settings, load_suite, parse_shard
    from mlabench.sweep import plan_sweep

    if resume and out is None:
        raise UsageError("--resume needs --out DIR (the run directory to continue)")
    suite_obj = load_suite(suite)
    dev = resolve_device(device)
    overrides = collect_overrides(model, variant, backend, mode, batch, seq_len, q_len, dtype, kv_lora_rank,
                                  num_kv_heads, assignments)
    given = {"budget_s": budget, "warmup_s": warmup, "min_samples": min_samples, "threads": threads,
             "cuda_graph": cuda_graph, "accuracy": accuracy, "seed": seed, "rounds": rounds}
    settings = check_settings({k: v for k, v in given.items() if v is not None}, "the command line")
    options = {k: v for k, v in {"compile_mode": compile_mode, "sdpa_kernel": sdpa_kernel}.items() if v is not None}
    plan = plan_sweep(suite_obj, dev, overrides, settings, out, parse_shard(shard) if shard else None, options)

    err_console.print(f"[bold]mlabench sweep[/] suite [cyan]{plan.suite.name}[/] on [cyan]{dev}[/]: "
                      f"{len(plan.cases)} cases" + (f" ({len(plan.dropped)} combinations dropped as invalid)"
                                                    if plan.dropped else "") + f" -> {plan.out_dir}")
    outcome = _run_with_progress(plan, resume, probe)
    report_path = write_report_or_warn(plan.out_dir) if report else None
    from mlabench.cli.summary import print_summary

    print_summary(outcome, report_path, as_json)
    if outcome.interrupted:
        err_console.print(f"interrupted: rows so far are kept; continue with "
                          f"`mlabench sweep --suite {suite} --out {plan.out_dir} --resume`")
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _run_with_progress(plan: Any, resume: bool, probe: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mlabench.sweep import run_sweep

    stop = {"requested": False}

    def on_sigint(_signum: int, _frame: object) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt  # second Ctrl-C: abandon the case in flight
        stop["requested"] = True
        err_console.print("[yellow]Ctrl-C: stopping after the current case (again to stop now)[/]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[case]}"))
    try:
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("sweep", total=None, case="probing peaks")

            def on_start(case: Any, i: int, n: int) -> None:
                bar.update(task, total=n, completed=i, case=case.label())

            def on_end(result: Any) -> None:
                bar.advance(task)
                if result.status not in ("ok", "skipped", "unsupported"):
                    bar.console.print(f"  [red]{result.status}[/] {result.row['variant']}/{result.row['backend']} "
                                      f"{result.row['mode']} b={result.row['batch']} T={result.row['seq_len']}: "
                                      f"{result.row.get('error', '')}")

            outcome = run_sweep(plan, resume, probe, on_start, on_end, lambda: stop["requested"])
            bar.update(task, case="done")
    finally:
        signal.signal(signal.SIGINT, previous)
    return outcome
