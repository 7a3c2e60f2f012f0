"""A sweep: suite -> cases -> one row per case, appended as each finishes.

The loop knows nothing about terminals: the CLI passes callbacks for progress
and a `should_stop` predicate for Ctrl-C.

meta.json records what a run is (`run`: suite, axis overrides, shard, and a hash of
the expanded case list) beside the environment and settings, so `--resume` can
refuse to mix runs: a different environment or measurement settings is exit 3,
a different suite, case list or overrides exit 2, each naming what differs.
With `rounds` R > 1 the case list runs R times, each round in its own seeded
order (`mlabench.rounds`). Every round re-runs the whole case (build, cache fill,
backend prepare, timing) wherever the executor runs it; only the float64 accuracy check is
limited to the first round. Each round of a case is journalled as it ends (rundir.write);
its results row, summarising all its rounds, is appended when its last round ends, and
`--resume` runs only the missing rounds. Cases skipped, unsupported or failed in round 0
are not re-run.

An executor (`mlabench.executors`) runs the cases: in this process by default, each in a
child process (`isolate`), or as Ray tasks (`ray`); results come back here in any order and
this module alone writes them. meta.json records the executor and one fingerprint per device
kind the cases ran on (`devices`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlabench import analytic, schema
from mlabench.backends import apply_options, served_variants
from mlabench.case import Case
from mlabench.config import ShapeError
from mlabench.errors import NotComparableError, UsageError
from mlabench.executors.local import LocalExecutor
from mlabench.executors.protocol import Executor
from mlabench.measure.envinfo import device_label, fingerprint
from mlabench.measure.memory import open_nvml
from mlabench.measure.peaks import Peaks, measure_peaks
from mlabench.profiling.request import ProfileRequest
from mlabench.rounds import combine_rounds, round_order
from mlabench.rundir import RunMeta, RunWriter
from mlabench.runner import CaseResult, RunContext
from mlabench.settings import SweepSettings
from mlabench.suites import Suite, expand, shard
from mlabench.tp import close_rank_groups
from mlabench.tp import run_any_case as run_case  # tp = 1 here, tp > 1 on its ranks


@dataclass(frozen=True)
class Overrides:
    """What a command line changes about a suite, built once from the flags: axes that replace
    the suite's, measurement settings over its [settings], backend options over its [options]."""

    axes: Mapping[str, list[Any]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)  # already checked (SweepSettings.check)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class SweepPlan:
    suite: Suite
    device: torch.device
    cases: list[Case]  # this shard's cases, including those already finished
    dropped: list[str]
    merged: list[str]  # grid points that are the same case as an earlier one (see suites.Expansion)
    settings: SweepSettings
    out_dir: Path
    shard: tuple[int, int] | None = None
    overrides: dict[str, list[Any]] = field(default_factory=dict)
    grid_sha1: str = ""  # the whole grid's case list, before sharding (shards of one grid share it)
    grid_cases: int = 0


@dataclass
class SweepOutcome:
    out_dir: Path
    results: list[CaseResult] = field(default_factory=list)
    skipped_finished: int = 0
    interrupted: bool = False
    device_lost: str | None = None  # a sticky CUDA error stopped the sweep: that case's error

    @property
    def status_counts(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    @property
    def failed(self) -> bool:
        return any(r.status in schema.FAILED_STATUSES for r in self.results)


def cases_sha1(cases: list[Case]) -> str:
    """A hash of a case list that changes with any case field (shape, options), in any order."""
    return hashlib.sha1("\n".join(sorted(repr(c) for c in cases)).encode()).hexdigest()


def default_out_dir(suite: str, device: torch.device) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / "runs" / f"{stamp}-{suite}-{device_label(device).replace(':', '')}"


def plan_sweep(suite: Suite, device: torch.device, overrides: Overrides = Overrides(), out_dir: Path | None = None,
               shard_spec: tuple[int, int] | None = None) -> SweepPlan:
    """Everything checked before any work: names, shapes, settings, the output directory.
    `sweep` plans a suite; `run` plans a one-case suite the same way."""
    merged_suite = Suite(suite.name, suite.description, suite.path, suite.grids, suite.settings,
                         {**suite.options, **overrides.options}, suite.cpu_axes)
    expansion = expand(merged_suite, device_label(device), served_variants(), overrides.axes)
    cases = apply_options(expansion.cases, merged_suite.options)
    grid = cases
    if shard_spec:
        cases = shard(cases, *shard_spec)
        if not cases:
            raise UsageError(f"--shard {shard_spec[0]}/{shard_spec[1]}: this slice of the grid's {len(grid)} cases "
                             "is empty (use fewer shards)")
    settings = SweepSettings.resolve(suite.settings, overrides.settings)
    for case in cases:  # the query heads and KV groups split evenly, or the sweep does not start
        try:
            analytic.check_tp(case.variant, case.shape, case.tp)
        except ShapeError as exc:
            raise UsageError(f"{exc}, in {case.variant} of {case.model}") from None
    return SweepPlan(merged_suite, device, cases, expansion.dropped, expansion.merged, settings,
                     out_dir or default_out_dir(suite.name, device), shard_spec,
                     {k: list(v) for k, v in overrides.axes.items()}, cases_sha1(grid), len(grid))


def run_record(plan: SweepPlan) -> dict[str, Any]:
    """What a run is: resume and merge check it."""
    auto = "bfloat16" if plan.device.type == "cuda" else "float32"
    return {
        "suite": plan.suite.name,
        "overrides": plan.overrides,
        "options": plan.suite.options,
        "shard": f"{plan.shard[0]}/{plan.shard[1]}" if plan.shard else None,
        "cases": len(plan.cases),
        "cases_sha1": cases_sha1(plan.cases),
        "grid_cases": plan.grid_cases,
        "grid_sha1": plan.grid_sha1,
        "dtype_policy": f"auto={auto}",
    }


def _differences(pairs: list[tuple[str, Any, Any]]) -> list[str]:
    return [f"{name} {old!r} -> {new!r}" for name, old, new in pairs if old != new]


def check_resume(out_dir: Path, meta: RunMeta) -> Callable[[RunMeta | None, bool], None]:
    """The check RunWriter runs on resume: the recorded run must be this run, in this environment."""

    def check(previous: RunMeta | None, has_rows: bool) -> None:
        if previous is None or previous.run is None:
            if not has_rows:
                return  # killed before its first row: nothing to mix
            raise UsageError(f"--resume: {out_dir} has rows but no run record in meta.json (written by an "
                             "older mlabench, or meta.json lost); start a new --out")
        old_run, new_run = previous.run, meta.run or {}
        old_settings = {k: v for k, v in (previous.settings or {}).items() if k != "options"}
        new_settings = {k: v for k, v in (meta.settings or {}).items() if k != "options"}
        old_env, new_env = previous.environment, meta.environment
        env = _differences([
            ("device", previous.device_name, meta.device_name),
            ("torch", old_env.get("torch"), new_env["torch"]),
            ("triton", old_env.get("triton"), new_env["triton"]),
            ("dtype policy", old_run.get("dtype_policy"), new_run["dtype_policy"]),
        ]) + _differences([(k, old_settings.get(k), new_settings.get(k))
                           for k in sorted(set(old_settings) | set(new_settings))])
        if env:
            raise NotComparableError(f"--resume: {out_dir} was measured differently: {'; '.join(env)} "
                                     "(resume with the same device, software and settings, or start a new --out)")
        what = _differences([(k, old_run.get(k), new_run[k]) for k in ("suite", "overrides", "options", "shard")])
        if not what and old_run.get("cases_sha1") != new_run["cases_sha1"]:
            what = [f"case list ({old_run.get('cases')} cases -> {new_run['cases']}, the suite file changed)"]
        if what:
            raise UsageError(f"--resume: {out_dir} holds another run: {'; '.join(what)} "
                             "(give the same suite and options, or start a new --out)")

    return check


def open_run(plan: SweepPlan, resume: bool, device_meta: dict[str, Any] | None = None
             ) -> tuple[RunWriter, RunMeta]:
    """Lock and check the run directory, record the run in meta.json; nothing is measured yet.
    `device_meta`: the fingerprint of the device the cases run on, when it is not in this
    process (a Ray worker's GPU); the rest of the fingerprint is this driver's."""
    env = fingerprint(plan.device) if device_meta is None else {**fingerprint(torch.device("cpu")),
                                                                  "device": device_meta}
    meta = RunMeta(environment=env, suite=plan.suite.name, suite_path=plan.suite.path,
                   shard=f"{plan.shard[0]}/{plan.shard[1]}" if plan.shard else None,
                   settings={**plan.settings.as_dict(), "options": plan.suite.options}, cases=len(plan.cases),
                   run=run_record(plan),
                   tensor_parallel={"degrees": sorted({c.tp for c in plan.cases}),
                                    "backends": sorted({c.dist_backend for c in plan.cases} - {""})})
    writer = RunWriter(plan.out_dir, resume, check_resume(plan.out_dir, meta))
    try:
        previous = writer.previous_meta
        if previous is not None and previous.run is not None:
            env["created_utc"] = previous.created_utc or env["created_utc"]
            meta.resumed_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        writer.write_meta(meta)
    except BaseException:
        writer.close()
        raise
    return writer, meta


def _dtypes(plan: SweepPlan) -> list[str]:
    """The plan's dtypes, most frequent first (the first one's peak is the run's headline)."""
    return sorted({c.dtype for c in plan.cases}, key=lambda d: -sum(c.dtype == d for c in plan.cases))


def run_context(plan: SweepPlan, probe: bool = True, profile: ProfileRequest | None = None,
                peaks: Peaks | None = None) -> RunContext:
    """What every case of the plan runs in: CPU threads set, peaks measured (or the spec table),
    timing and case settings from the plan, and which cases to profile. `run_sweep` and
    `mlabench run` both measure in it. `peaks`: measured elsewhere, where the cases run (a Ray
    worker's device), so none here."""
    s = plan.settings
    if s.threads and plan.device.type == "cpu":
        torch.set_num_threads(s.threads)
    return RunContext(
        device=plan.device, timing=s.timing, peaks=peaks or measure_peaks(plan.device, _dtypes(plan), probe),
        nvml=open_nvml(plan.device), accuracy=s.accuracy, seed=s.seed, timeout_s=s.timeout_s, profile=profile,
    )


def run_sweep(plan: SweepPlan, resume: bool, probe: bool = True,
              on_start: Callable[[Case, int, int], None] | None = None,
              on_end: Callable[[CaseResult], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False,
              opened: tuple[RunWriter, dict[str, Any]] | None = None,
              profile: ProfileRequest | None = None,
              executor: Executor | None = None) -> SweepOutcome:
    """Measure the plan's unfinished cases. `opened` is `open_run`'s result when the caller
    checked the directory first; the directory's lock is released on return. `profile`
    (checked by the caller, profiling.request.check_request) profiles the cases it selects.
    `executor` runs the cases (default: in this process); rows are written here, whichever ran them."""
    writer, meta = opened or open_run(plan, resume)
    # This module's run_case, looked up now: code that wraps or replaces it sees every case.
    executor = executor or LocalExecutor(run_case)
    write_error: OSError | None = None
    try:
        todo = [c for c in plan.cases if c.case_id not in writer.finished]
        outcome = SweepOutcome(plan.out_dir, skipped_finished=len(plan.cases) - len(todo))
        # Peaks are measured where the cases run: an executor whose workers hold the device (Ray)
        # brings its own; otherwise the device is this process's.
        ctx = run_context(plan, probe, profile,
                          executor.peaks(_dtypes(plan), probe))
        dtypes = _dtypes(plan)
        meta.peaks = ctx.peaks.as_meta(dtypes[0] if dtypes else None)
        meta.executor = executor.name
        meta.devices = meta.devices or {}
        if meta.device_name:
            meta.devices.setdefault(meta.device_name, meta.environment["device"])
        writer.write_meta(meta)
        rounds = plan.settings.rounds
        log = _Log(writer, meta, outcome, on_end)
        try:
            if rounds > 1:
                write_error = _run_rounds(todo, rounds, ctx, executor, log, on_start, should_stop)
            else:
                write_error = _run_once(todo, ctx, executor, log, on_start, should_stop)
        except KeyboardInterrupt:
            outcome.interrupted = True
        meta.finished_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        meta.interrupted = outcome.interrupted
        if outcome.device_lost:
            meta.device_lost = outcome.device_lost
        try:
            writer.write_meta(meta)
        except OSError:
            if write_error is None:
                raise
    finally:
        close_rank_groups()
        writer.close()
    if write_error is not None:
        raise UsageError(f"cannot write to {plan.out_dir} ({write_error.strerror or write_error}); "
                         f"{len(writer.finished)} rows on disk are kept: fix it and rerun with --resume")
    return outcome


@dataclass
class _Log:
    """Where finished results go: the run directory, the outcome, meta.json's device kinds and
    the caller's on_end."""

    writer: RunWriter
    meta: RunMeta
    outcome: SweepOutcome
    on_end: Callable[[CaseResult], None] | None

    def device(self, result: CaseResult) -> None:
        """A case run in another process on a device kind not yet in meta.json: record its fingerprint."""
        name = (result.device or {}).get("name")
        devices = self.meta.devices if self.meta.devices is not None else {}
        if name and name not in devices:
            self.meta.devices = {**devices, name: result.device}
            self.writer.write_meta(self.meta)

    def lost(self, result: CaseResult) -> bool:
        """Whether the case left the CUDA context unusable; then every later case would fail the same way."""
        if result.fatal:
            self.outcome.device_lost = str(result.row.get("error", ""))
        return result.fatal


def _run_once(todo: list[Case], ctx: RunContext, executor: Executor, log: _Log,
              on_start: Callable[[Case, int, int], None] | None, should_stop: Callable[[], bool]) -> OSError | None:
    """Every case once, its row and samples appended as its result arrives. Returns the write
    error that stopped it, if one did."""
    results = executor.run(todo, ctx, on_start, should_stop)
    try:
        for result in results:
            try:
                log.writer.append(result.row, result.samples_ms)
                log.device(result)
            except OSError as exc:  # disk full, directory gone: rows on disk stay valid for --resume
                log.outcome.interrupted = True
                return exc
            log.outcome.results.append(result)
            if log.on_end:
                log.on_end(result)
            if log.lost(result):
                return None
        log.outcome.interrupted = len(log.outcome.results) < len(todo)  # should_stop() ended it early
    finally:
        results.close()  # abandons the cases still in flight (child processes, Ray tasks)
    return None


def _run_rounds(todo: list[Case], rounds: int, ctx: RunContext, executor: Executor, log: _Log,
                on_start: Callable[[Case, int, int], None] | None, should_stop: Callable[[], bool]) -> OSError | None:
    """Every case `rounds` times (a resumed one: its missing rounds), each round in its own order and whole
    before the next; a row after a case's last round. Returns the write error that stopped it, if one did."""
    later = dataclasses.replace(ctx, accuracy=False)  # the reference check is deterministic: once is enough
    if ctx.profile is not None:  # one trace per case, after round 0's samples; NVTX ranges in every round
        later.profile = dataclasses.replace(ctx.profile, out_dir=None, memory_snapshot=False)
    done = {c.case_id: [CaseResult(schema.ResultRow.from_mapping(row), samples)
                        for row, samples in log.writer.unfinished_rounds.get(c.case_id, [])] for c in todo}
    def going(history: list[CaseResult]) -> bool:  # skipped, unsupported or failed in round 0: no more rounds
        return len(history) < rounds and (not history or history[0].status in ("ok", "inaccurate"))

    def finish(history: list[CaseResult], fatal: bool = False) -> None:
        row = schema.ResultRow.from_mapping(
            combine_rounds([h.row.as_dict() for h in history], [h.samples_ms for h in history]))
        log.writer.append(row, [])
        log.outcome.results.append(CaseResult(row, [x for h in history for x in h.samples_ms], fatal))
    try:  # killed after a case's last journalled round, before its row
        for history in done.values():
            if history and not going(history):
                finish(history)
    except OSError as exc:
        log.outcome.interrupted = True
        return exc
    step, total = 0, sum(rounds - len(h) for h in done.values() if going(h))
    for r in range(rounds):
        cases = [c for c in round_order(todo, ctx.seed, r) if len(done[c.case_id]) == r and going(done[c.case_id])]

        def started(case: Case, i: int, _n: int, base: int = step) -> None:
            if on_start:
                on_start(case, base + i, total)

        results = executor.run(cases, ctx if r == 0 else later, started, should_stop)
        finished = 0
        try:
            for result in results:
                finished += 1
                history = done[str(result.row.case_id)]
                try:
                    log.writer.append_round(result.row, result.samples_ms, r)
                    log.device(result)
                    history.append(result)
                    if log.on_end:
                        log.on_end(result)
                    if not going(history) or result.fatal:
                        finish(history, result.fatal)
                except OSError as exc:  # disk full, directory gone: rows on disk stay valid for --resume
                    log.outcome.interrupted = True
                    return exc
                if log.lost(result):
                    return None
        finally:
            results.close()  # abandons the cases still in flight (child processes, Ray tasks)
        step += len(cases)
        if finished < len(cases):  # should_stop() ended the round early
            log.outcome.interrupted = True
            return None
    return None
