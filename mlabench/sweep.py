"""A sweep: suite -> cases -> one row per case, appended as each finishes.

The loop knows nothing about terminals: the CLI passes callbacks for progress
and a `should_stop` predicate for Ctrl-C.

With `rounds` R > 1 the case list runs R times, each round in its own seeded
order (`mlabench.rounds`). Every round re-runs the whole case (build, cache fill,
backend prepare, timing) in this process; only the float64 accuracy check is
limited to the first round. Samples are written per round as they are taken; a
case's results row, summarising all its rounds, is appended when its last round
ends, so a killed sweep keeps the cases whose last round finished and `--resume`
runs the others again from round 0. Cases that were skipped, unsupported or
failed in round 0 are not re-run.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlabench import schema
from mlabench.backends import check_options, served_variants
from mlabench.case import Case
from mlabench.errors import UsageError
from mlabench.measure.envinfo import device_label, fingerprint
from mlabench.measure.memory import open_nvml
from mlabench.measure.peaks import Peaks, probe_peaks, spec_peaks
from mlabench.measure.timing import TimingSettings
from mlabench.results import RunWriter
from mlabench.rounds import combine_rounds, round_order
from mlabench.runner import CaseResult, RunContext, run_case
from mlabench.suites import Suite, expand, shard

DEFAULT_SETTINGS: dict[str, Any] = {
    "budget_s": 0.5, "warmup_s": 0.1, "min_samples": 10, "max_samples": 1000, "threads": 0, "seed": 0,
    "cuda_graph": False, "accuracy": True, "rounds": 1,
}


@dataclass
class SweepPlan:
    suite: Suite
    device: torch.device
    cases: list[Case]  # this shard's cases, including those already finished
    dropped: list[str]
    settings: dict[str, Any]
    out_dir: Path
    shard: tuple[int, int] | None = None


@dataclass
class SweepOutcome:
    out_dir: Path
    results: list[CaseResult] = field(default_factory=list)
    skipped_finished: int = 0
    interrupted: bool = False

    @property
    def status_counts(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    @property
    def failed(self) -> bool:
        return any(r.status in schema.FAILED_STATUSES for r in self.results)


def default_out_dir(suite: str, device: torch.device) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / "runs" / f"{stamp}-{suite}-{device_label(device).replace(':', '')}"


def plan_sweep(suite: Suite, device: torch.device, overrides: Mapping[str, list[Any]],
               settings: Mapping[str, Any], out_dir: Path | None, shard_spec: tuple[int, int] | None,
               options: Mapping[str, Any]) -> SweepPlan:
    """Everything checked before any work: names, shapes, settings, the output directory."""
    merged_suite = Suite(suite.name, suite.description, suite.path, suite.grids, suite.settings,
                         {**suite.options, **options})
    expansion = expand(merged_suite, device_label(device), served_variants(), overrides)
    cases = expansion.cases
    check_options(cases[0])  # every case carries the same options
    if shard_spec:
        cases = shard(cases, *shard_spec)
    merged = {**DEFAULT_SETTINGS, **suite.settings, **settings}
    if int(merged["rounds"]) < 1:
        raise UsageError(f"rounds must be at least 1, got {merged['rounds']}")
    return SweepPlan(merged_suite, device, cases, expansion.dropped, merged,
                     out_dir or default_out_dir(suite.name, device), shard_spec)


def measure_peaks(device: torch.device, dtypes: list[str], probe: bool) -> Peaks:
    if probe:
        try:
            return probe_peaks(device, dtypes)
        except Exception:  # a failed probe must not cost the sweep; fall back to the spec table
            pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return spec_peaks(name, dtypes)


def run_sweep(plan: SweepPlan, resume: bool, probe: bool = True,
              on_start: Callable[[Case, int, int], None] | None = None,
              on_end: Callable[[CaseResult], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False) -> SweepOutcome:
    writer = RunWriter(plan.out_dir, resume)
    todo = [c for c in plan.cases if c.case_id not in writer.finished]
    outcome = SweepOutcome(plan.out_dir, skipped_finished=len(plan.cases) - len(todo))
    s = plan.settings
    if s["threads"] and plan.device.type == "cpu":
        torch.set_num_threads(int(s["threads"]))
    dtypes = sorted({c.dtype for c in plan.cases}, key=lambda d: -sum(c.dtype == d for c in plan.cases))
    peaks = measure_peaks(plan.device, dtypes, probe)
    meta = {
        **fingerprint(plan.device),
        "suite": plan.suite.name,
        "suite_path": plan.suite.path,
        "shard": f"{plan.shard[0]}/{plan.shard[1]}" if plan.shard else None,
        "peaks": peaks.as_meta(dtypes[0] if dtypes else None),
        "settings": {**s, "options": plan.suite.options},
        "cases": len(plan.cases),
    }
    writer.write_meta(meta)
    ctx = RunContext(
        device=plan.device,
        timing=TimingSettings(budget_s=s["budget_s"], warmup_s=s["warmup_s"], min_samples=s["min_samples"],
                              max_samples=s["max_samples"], threads=s["threads"], cuda_graph=s["cuda_graph"]),
        peaks=peaks, nvml=open_nvml(plan.device), accuracy=s["accuracy"], seed=s["seed"],
    )
    rounds = max(1, int(s.get("rounds", 1)))
    try:
        if rounds == 1:
            for i, case in enumerate(todo):
                if should_stop():
                    outcome.interrupted = True
                    break
                if on_start:
                    on_start(case, i, len(todo))
                result = run_case(case, ctx)
                writer.append(result.row, result.samples_ms)
                outcome.results.append(result)
                if on_end:
                    on_end(result)
        else:
            _run_rounds(todo, rounds, ctx, writer, outcome, on_start, on_end, should_stop)
    except KeyboardInterrupt:
        outcome.interrupted = True
    meta["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta["interrupted"] = outcome.interrupted
    writer.write_meta(meta)
    return outcome


def _run_rounds(todo: list[Case], rounds: int, ctx: RunContext, writer: RunWriter, outcome: SweepOutcome,
                on_start: Callable[[Case, int, int], None] | None, on_end: Callable[[CaseResult], None] | None,
                should_stop: Callable[[], bool]) -> None:
    """Every case `rounds` times, round by round in shuffled order; a row appended after the case's last round."""
    later = dataclasses.replace(ctx, accuracy=False)  # the reference check is deterministic: once is enough
    done: dict[str, list[CaseResult]] = {c.case_id: [] for c in todo}
    step, total = 0, len(todo) * rounds
    for r in range(rounds):
        for case in round_order(todo, ctx.seed, r):
            history = done[case.case_id]
            if history and history[0].status not in ("ok", "inaccurate"):
                continue  # skipped, unsupported or failed in round 0: its row is already written
            if should_stop():
                outcome.interrupted = True
                return
            if on_start:
                on_start(case, step, total)
            step += 1
            result = run_case(case, ctx if r == 0 else later)
            writer.append_samples(case.case_id, result.samples_ms, r)
            history.append(result)
            if on_end:
                on_end(result)
            if r == rounds - 1 or (r == 0 and result.status not in ("ok", "inaccurate")):
                row = combine_rounds([h.row for h in history], [h.samples_ms for h in history])
                writer.append(row, [])
                outcome.results.append(CaseResult(row, [x for h in history for x in h.samples_ms]))
