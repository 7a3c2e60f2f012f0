"""What `mlabench sweep` shows on a terminal: the plan, the dry-run estimate, live progress,
the stop signals, and the end of a run (report, summary, the resume hint, the exit code).

The sweep itself (`mlabench.sweep`) knows nothing of terminals; this module is its face.
"""

from __future__ import annotations

import signal
from typing import Any

import typer

from mlabench.cli.common import err_console, out_console, print_json, write_report_or_warn
from mlabench.errors import UsageError

SHOWN_CASES = 40  # a dry run lists this many cases on a terminal (all of them with --json)


def dry_run_device(name: str) -> Any:
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


def inherited_axes(plan: Any) -> dict[str, list[Any]]:
    """The axes the suite's grids set (not the command line), with the suite's values (its
    `[cpu]` table's on a CPU): what an override such as `--variant X` silently kept."""
    cpu = plan.suite.cpu_axes if plan.device.type == "cpu" else {}
    out: dict[str, list[Any]] = {}
    for grid in plan.suite.grids:
        for axis, values in {**grid, **cpu}.items():
            if axis not in plan.overrides and axis != "suite":
                out.setdefault(axis, [])
                out[axis] += [v for v in values if v not in out[axis]]
    return out


def _axes_text(axes: dict[str, list[Any]]) -> str:
    def values(v: list[Any]) -> str:
        return ",".join(map(str, v[:4])) + (f",... ({len(v)})" if len(v) > 4 else "")

    return "; ".join(f"{a}={values(v)}" for a, v in axes.items())


def announce_plan(plan: Any, dev: Any, request: Any) -> None:
    """The plan line (and, under overrides, which axes the suite still decides), dropped and merged
    grid points, and the profiling request."""
    from mlabench.cli.profile_view import announce_profile

    err_console.print(f"[bold]mlabench sweep[/] suite [cyan]{plan.suite.name}[/] on [cyan]{dev}[/]: "
                      f"{len(plan.cases)} cases -> {plan.out_dir}", soft_wrap=True)
    if plan.overrides:
        err_console.print(f"  axes from suite {plan.suite.name}: {_axes_text(inherited_axes(plan)) or 'none'} "
                          f"(the command line set {', '.join(plan.overrides)})", soft_wrap=True, markup=False)
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


def print_estimate(plan: Any, as_json: bool) -> None:
    """`--dry-run`: the case count, an estimated run time, and the cases themselves."""
    import torch

    from mlabench.backends import BACKENDS
    from mlabench.estimate import estimate_sweep

    dev = plan.device
    present = dev.type == "cpu" or torch.cuda.is_available()  # else: planning for a GPU that is not here
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" and present else None
    unavailable = frozenset(b for b, spec in BACKENDS.items() if present and spec.unavailable(dev))
    est = estimate_sweep(plan.cases, plan.settings, dev.type, name, unavailable)
    if as_json:
        print_json({"suite": plan.suite.name, "device": str(dev), **est.as_dict(),
                    "suite_axes": inherited_axes(plan) if plan.overrides else None,
                    "case_list": [{"case_id": c.case_id, "label": c.label()} for c in plan.cases]})
        return
    mode = "CUDA-graph (hot)" if plan.settings.cuda_graph else "cold"
    rounds = f" x {est.rounds} rounds" if est.rounds > 1 else ""
    out_console.print(f"{plan.suite.name} on {dev}: {est.cases} cases{rounds}, estimated {est.seconds / 60:.1f} min "
                      f"({est.seconds:.0f} s; {mode} timing, assuming {est.device})")
    if any(c.tp > 1 for c in plan.cases):  # a tp = N case holds N devices at once
        out_console.print(f"  {est.device_seconds:.0f} device-seconds: each tensor-parallel case holds its "
                          f"{'GPUs' if dev.type == 'cuda' else 'rank processes'} for its whole time")
    for backend, seconds in sorted(est.by_backend.items(), key=lambda kv: -kv[1]):
        out_console.print(f"  {backend:<11} {seconds:7.0f} s" + ("  (skipped here)" if backend in unavailable else ""))
    if plan.overrides:
        out_console.print(f"axes from suite {plan.suite.name}: {_axes_text(inherited_axes(plan)) or 'none'}",
                          markup=False, soft_wrap=True)
    out_console.print("cases:")
    for case in plan.cases[:SHOWN_CASES]:
        out_console.print(f"  {case.label()}", markup=False, soft_wrap=True)
    if len(plan.cases) > SHOWN_CASES:
        out_console.print(f"  ... and {len(plan.cases) - SHOWN_CASES} more (--json lists every case)")
    out_console.print("This is an estimate from the analytic bytes/FLOPs, peak rates and a fixed per-case "
                      "overhead (warm-up, budget, compile, accuracy reference), not a measurement. Nothing was run.")
    if dev.type == "cpu" and not torch.cuda.is_available():
        out_console.print("(No CUDA here: `--device cuda --dry-run` sizes the run for a GPU.)")


class Stopper:
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

    def __enter__(self) -> Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_with_progress(plan: Any, resume: bool, probe: bool, stopper: Stopper, opened: Any,
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


def run_and_finish(plan: Any, opened: Any, runner: Any, request: Any, resume: bool, probe: bool, report: bool,
                   as_json: bool, out_given: bool, summary: Any = None) -> None:
    """Run the plan with live progress, write the report, print the summary and how to resume;
    exit as the sweep ended (130/143 on a signal, 1 on a failed case or a lost device).
    `summary(outcome, report_path, as_json)` prints the end (default: the sweep's table)."""
    from mlabench.cli.summary import print_summary

    stopper = Stopper()
    with stopper:
        try:
            outcome = run_with_progress(plan, resume, probe, stopper, opened, request, runner)
        finally:
            runner.close()
        report_path = None
        if report:
            stopper.in_report = True
            try:
                report_path = write_report_or_warn(plan.out_dir)
            except KeyboardInterrupt:  # a signal while writing: the rows matter, the report can wait
                err_console.print(f"report skipped; write it with `mlabench report {plan.out_dir}`", soft_wrap=True)
            stopper.in_report = False
        (summary or print_summary)(outcome, report_path, as_json)
        again = "--resume" if out_given else f"--out {plan.out_dir} --resume"
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
    if outcome.device_lost or outcome.failed:
        raise typer.Exit(1)
