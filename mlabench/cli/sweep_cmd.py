"""`mlabench sweep`: run a suite's grid on one device into a run directory.

Thin: parse flags, plan (every check before any work), lock and check the run
directory, run with a rich progress bar on stderr, write the report, print the
summary. Exit 0 all good, 1 a case failed (oom, error, inaccurate, timeout), 2 bad
input, 3 `--resume` of a run measured differently, 130 interrupted by Ctrl-C and
143 by SIGTERM (rows kept either way).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from mlabench.cli.common import (
    AccuracyOpt,
    BudgetOpt,
    CompileModeOpt,
    CudaGraphOpt,
    DeviceOpt,
    JsonOpt,
    MaxSamplesOpt,
    MemorySnapshotOpt,
    MinSamplesOpt,
    NvtxOpt,
    OptionOpt,
    ProbeOpt,
    ProfileOpt,
    ReportOpt,
    SdpaKernelOpt,
    SeedOpt,
    SetOpt,
    ThreadsOpt,
    TimeoutOpt,
    WarmupOpt,
    err_console,
    flag_settings,
    parse_assignments,
    parse_options,
    split_list,
    split_seq_lens,
    write_report_or_warn,
)
from mlabench.errors import UsageError


def _axis(what: str) -> Any:
    return typer.Option(help=f"{what}, comma-separated; replaces the suite's axis.", show_default=False)


# Axis flags: the case field each sets, its flag, and the type of its items.
AXIS_FLAGS: dict[str, tuple[str, type]] = {
    "model": ("--model", str), "variant": ("--variant", str), "backend": ("--backend", str), "mode": ("--mode", str),
    "batch": ("--batch", int), "seq_len": ("--seq-len", int), "q_len": ("--q-len", int), "dtype": ("--dtype", str),
    "kv_lora_rank": ("--kv-lora-rank", int), "num_kv_heads": ("--num-kv-heads", int), "scope": ("--scope", str),
}


def axis_overrides(given: dict[str, str | None], assignments: list[str] | None) -> dict[str, list[Any]]:
    """Command-line axis overrides ({field: comma-separated text or None}, and --set), each
    replacing the suite's whole axis."""
    def parsed(names: list[str]) -> dict[str, list[Any]]:
        lists = {name: split_seq_lens(AXIS_FLAGS[name][0], given[name]) if name == "seq_len"
                 else split_list(AXIS_FLAGS[name][0], given[name], AXIS_FLAGS[name][1]) for name in names}
        return {name: values for name, values in lists.items() if values is not None}

    # --scope last: it wins over --set scope=..., as it always has, and keeps the axes' order.
    return {**parsed([n for n in given if n != "scope"]), **parse_assignments(assignments),
            **parsed([n for n in given if n == "scope"])}


def sweep(
    suite: Annotated[str, typer.Option(help="Suite name (see `mlabench list`) or path to a .toml file.")] = "smoke",
    device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(help="Run directory [default: results/runs/<UTC time>-<suite>-<device>].",
                                             show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume",
                                         help="Continue the run in --out, skipping finished cases.")] = False,
    shard: Annotated[str | None, typer.Option(help="Run the K-th of N deterministic slices of the grid, e.g. 2/4; "
                                                   "auto: this Slurm array task's slice.",
                                              show_default=False)] = None,
    model: Annotated[str | None, _axis("Model presets (see `mlabench list`)")] = None,
    variant: Annotated[str | None, _axis("Attention variants, e.g. mha,mla-absorbed")] = None,
    backend: Annotated[str | None, _axis("Backends, e.g. eager,sdpa")] = None,
    mode: Annotated[str | None, _axis("Modes: prefill, decode")] = None,
    batch: Annotated[str | None, _axis("Batch sizes, e.g. 1,8")] = None,
    seq_len: Annotated[str | None, _axis(
        "Context lengths, e.g. 1024,4096, or a ragged batch's distribution: uniform:1024-32768, "
        "lognormal:median=4096,sigma=1, list:900/4096")] = None,
    q_len: Annotated[str | None, _axis("New tokens per decode step")] = None,
    dtype: Annotated[str | None, _axis("Dtypes: auto, bfloat16, float16, float32")] = None,
    kv_lora_rank: Annotated[str | None, _axis("Latent ranks (MLA d_c, lowrank-kv r, linformer k)")] = None,
    num_kv_heads: Annotated[str | None, _axis("KV head counts (GQA groups)")] = None,
    scope: Annotated[str | None, typer.Option(
        help="Timing scope: step (the whole layer), core (the attention core alone), or both: step,core.",
        show_default=False)] = None,
    assignments: SetOpt = None,
    option: OptionOpt = None,
    compile_mode: CompileModeOpt = None,
    sdpa_kernel: SdpaKernelOpt = None,
    budget: BudgetOpt = None,
    warmup: WarmupOpt = None,
    min_samples: MinSamplesOpt = None,
    max_samples: MaxSamplesOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    cuda_graph: CudaGraphOpt = None,
    accuracy: AccuracyOpt = None,
    seed: SeedOpt = None,
    rounds: Annotated[int | None, typer.Option(help="Run the case list this many times, each round in its own "
                                               "seeded order; compare tests on the rounds [default: the suite's, "
                                               "else 1].", show_default=False)] = None,
    profile: ProfileOpt = None,
    profile_match: Annotated[list[str] | None, typer.Option(
        help="With --profile: profile only the cases matching FIELD=VALUE[,FIELD=VALUE...] (key columns, e.g. "
             "'variant=mla-absorbed,backend=triton'; repeatable: any may match) [default: every case].",
        show_default=False)] = None,
    memory_snapshot: MemorySnapshotOpt = False,
    nvtx: NvtxOpt = False,
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree of the analytic kv_cache_bytes_per_gpu "
                                           "column; must divide every case's num_heads [default: the suite's, "
                                           "else 1].", show_default=False)] = None,
    probe: ProbeOpt = True,
    report: ReportOpt = True,
    as_json: JsonOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the case count and an estimated run time, "
                                                            "then exit; nothing runs, no run directory.")] = False,
    isolate: Annotated[bool, typer.Option("--isolate", help="Run each case in a fresh child process: a crash or "
                                                            "a hang becomes that case's row.")] = False,
    executor: Annotated[str | None, typer.Option(help="Where cases run: local (this process), isolate (a child "
                                                      "process per case) or ray (a Ray task per case, one GPU "
                                                      "each) [default: local].", show_default=False)] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to use with --executor ray [default: start "
                                                         "a local Ray instance].", show_default=False)] = None,
    ray_accelerator: Annotated[str | None, typer.Option(help="With --executor ray: run every case on GPUs of this "
                                                             "kind only, as Ray names it (e.g. H100, H200).",
                                                        show_default=False)] = None,
) -> None:
    """Sweep a suite's grid (sequence length, batch, latent rank, ...) and record every case."""
    from mlabench.cli.profile_view import announce_profile
    from mlabench.executors import choose_executor, make_executor
    from mlabench.executors.slurm import slurm_shard
    from mlabench.measure.envinfo import resolve_device
    from mlabench.profiling.request import build_request, check_request
    from mlabench.suites import load_suite, parse_shard
    from mlabench.sweep import Overrides, open_run, plan_sweep

    if resume and out is None:
        raise UsageError("--resume needs --out DIR (the run directory to continue)")
    settings = flag_settings({"budget_s": budget, "warmup_s": warmup, "min_samples": min_samples,
                              "max_samples": max_samples, "threads": threads, "cuda_graph": cuda_graph,
                              "accuracy": accuracy, "seed": seed, "timeout_s": timeout, "rounds": rounds,
                              "tp": tp})
    executor = choose_executor(executor, isolate, ray_address, ray_accelerator)
    shard_spec = (slurm_shard() if shard == "auto" else parse_shard(shard)) if shard else None
    suite_obj = load_suite(suite)
    axes = axis_overrides({"model": model, "variant": variant, "backend": backend, "mode": mode, "batch": batch,
                           "seq_len": seq_len, "q_len": q_len, "dtype": dtype, "kv_lora_rank": kv_lora_rank,
                           "num_kv_heads": num_kv_heads, "scope": scope}, assignments)
    options = parse_options(option, {"compile_mode": compile_mode, "sdpa_kernel": sdpa_kernel})
    request = build_request(profile, profile_match, memory_snapshot, nvtx)
    runner: Any = None
    if executor == "ray" and not dry_run:
        from mlabench.executors.ray_exec import RayExecutor

        runner = RayExecutor.connect(ray_address, ray_accelerator)
        try:
            dev = runner.resolve_device(device)  # the cluster's devices, not this machine's, decide --device
        except BaseException:
            runner.close()  # a local Ray instance started for this run
            raise
    else:
        dev = _dry_run_device(device) if dry_run else resolve_device(device)
    try:
        plan = plan_sweep(suite_obj, dev, Overrides(axes, settings, options), out, shard_spec)
        check_request(request, plan.cases)
        if dry_run:
            _print_estimate(plan, as_json)
            return
        if runner is None:
            runner = make_executor(executor)
        else:
            runner.describe(plan, probe)  # one task on a worker: the fingerprint and peaks of the cases' device
        # Locks and checks the directory: the last refusal comes before any output.
        opened = open_run(plan, resume, getattr(runner, "device_meta", None))
    except BaseException:
        getattr(runner, "close", lambda: None)()  # a local Ray instance started for this run
        raise

    err_console.print(f"[bold]mlabench sweep[/] suite [cyan]{plan.suite.name}[/] on [cyan]{dev}[/]: "
                      f"{len(plan.cases)} cases -> {plan.out_dir}", soft_wrap=True)
    if plan.dropped:
        reasons = list(dict.fromkeys(plan.dropped))
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else "")
        err_console.print(f"[dim]{len(plan.dropped)} grid combination(s) dropped as invalid: {shown}[/]",
                          soft_wrap=True, markup=True)
    announce_profile(request, dev.type, err_console)
    for line in plan.merged[:5]:  # an axis that does not apply must say so, not vanish
        err_console.print(f"  merged: {line}", highlight=False, soft_wrap=True)
    if len(plan.merged) > 5:
        err_console.print(f"  ... {len(plan.merged) - 5} more grid points merged the same way")
    stopper = _Stopper()
    with stopper:
        try:
            outcome = _run_with_progress(plan, resume, probe, stopper, opened, request, runner)
        finally:
            getattr(runner, "close", lambda: None)()
        report_path = None
        if report:
            stopper.in_report = True
            try:
                report_path = write_report_or_warn(plan.out_dir)
            except KeyboardInterrupt:  # a signal while writing: the rows matter, the report can wait
                err_console.print(f"report skipped; write it with `mlabench report {plan.out_dir}`", soft_wrap=True)
            stopper.in_report = False
        from mlabench.cli.summary import print_summary

        print_summary(outcome, report_path, as_json)
        again = "--resume" if out is not None else f"--out {plan.out_dir} --resume"
        if outcome.interrupted:
            err_console.print(f"interrupted: rows so far are kept; continue with the same command plus `{again}`",
                              soft_wrap=True, markup=False)
        if outcome.device_lost:
            err_console.print(f"stopped: a sticky CUDA error left the device unusable in this process "
                              f"({outcome.device_lost}). Rows so far are kept, the failing case among them; "
                              f"continue in a new process with the same command plus `{again}`",
                              soft_wrap=True, markup=False)
    if stopper.signum is not None:
        raise typer.Exit(128 + stopper.signum)  # 130 Ctrl-C, 143 SIGTERM: the shell's convention
    if outcome.device_lost:
        raise typer.Exit(1)
    if outcome.failed:
        raise typer.Exit(1)


def _dry_run_device(name: str) -> Any:
    """The device to plan for. Sizing a GPU run needs no GPU: without CUDA here, `--device cuda[:N]`
    plans for that device and the estimate assumes estimate.DEFAULT_GPU's spec peaks."""
    import torch

    from mlabench.measure.envinfo import resolve_device

    if name.startswith("cuda") and not torch.cuda.is_available():
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UsageError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
        return torch.device("cuda", dev.index or 0)
    return resolve_device(name)


def _print_estimate(plan: Any, as_json: bool) -> None:
    import torch

    from mlabench.backends import BACKENDS
    from mlabench.cli.common import out_console, print_json
    from mlabench.estimate import estimate_sweep

    dev = plan.device
    present = dev.type == "cpu" or torch.cuda.is_available()  # else: planning for a GPU that is not here
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" and present else None
    unavailable = frozenset(b for b, spec in BACKENDS.items() if present and spec.unavailable(dev))
    est = estimate_sweep(plan.cases, plan.settings, dev.type, name, unavailable)
    if as_json:
        print_json({"suite": plan.suite.name, "device": str(dev), **est.as_dict()})
        return
    mode = "CUDA-graph (hot)" if plan.settings.cuda_graph else "cold"
    rounds = f" x {est.rounds} rounds" if est.rounds > 1 else ""
    out_console.print(f"{plan.suite.name} on {dev}: {est.cases} cases{rounds}, estimated {est.seconds / 60:.1f} min "
                      f"({est.seconds:.0f} s; {mode} timing, assuming {est.device})")
    for backend, seconds in sorted(est.by_backend.items(), key=lambda kv: -kv[1]):
        out_console.print(f"  {backend:<11} {seconds:7.0f} s" + ("  (skipped here)" if backend in unavailable else ""))
    out_console.print("This is an estimate from the analytic bytes/FLOPs, peak rates and a fixed per-case "
                      "overhead (warm-up, budget, compile, accuracy reference), not a measurement. Nothing was run.")
    if dev.type == "cpu" and not torch.cuda.is_available():
        out_console.print("(No CUDA here: `--device cuda --dry-run` sizes the run for a GPU.)")


class _Stopper:
    """SIGINT and SIGTERM (how CI cancels a job) stop a sweep the same way: the first after
    the case in flight, a second one abandons that case. After the last case a signal only
    cuts the report short, so the summary and the resume hint are always printed."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.in_case = False
        self.in_report = False
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, _frame: object) -> None:
        self.count += 1
        self.signum = self.signum or signum
        if self.in_report or (self.in_case and self.count > 1):
            raise KeyboardInterrupt
        if self.count == 1:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            err_console.print(f"[yellow]{name}: stopping after the current case (again to stop now)[/]")

    @property
    def requested(self) -> bool:
        return self.count > 0

    def __enter__(self) -> _Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_with_progress(plan: Any, resume: bool, probe: bool, stopper: _Stopper, opened: Any,
                       request: Any = None, runner: Any = None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mlabench.cli.profile_view import print_profile
    from mlabench.sweep import run_sweep

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[case]}"))
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("sweep", total=None, case="probing peaks")

        # Several cases may be in flight (Ray workers): count them, and count completions (not
        # starts) on the bar, so its rate and ETA are the whole cluster's.
        running = [0]

        def on_start(case: Any, i: int, n: int) -> None:
            running[0] += 1
            stopper.in_case = True
            more = f" (+{running[0] - 1} running)" if running[0] > 1 else ""
            bar.update(task, total=n, completed=i, case=case.label() + more)

        def on_end(result: Any) -> None:
            running[0] = max(0, running[0] - 1)
            stopper.in_case = running[0] > 0
            bar.advance(task)
            if result.status not in ("ok", "skipped", "unsupported"):
                bar.console.print(f"  [red]{result.status}[/] {result.row['variant']}/{result.row['backend']} "
                                  f"{result.row['mode']} b={result.row['batch']} T={result.row['seq_len']}: "
                                  f"{result.row.get('error', '')}")
            if result.profile is not None:
                print_profile(result.profile, bar.console)

        outcome = run_sweep(plan, resume, probe, on_start, on_end, lambda: stopper.requested, opened, request, runner)
        bar.update(task, case="done")
    return outcome
