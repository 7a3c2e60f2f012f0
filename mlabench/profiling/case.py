"""Profile one measured case: trace, breakdown CSV, memory snapshot, and the core's share of the step.

Runs after the case's timed samples (runner.py), with the module, step and inputs those
samples used. Files in the profile directory, named by case id:

- `<case_id>.trace.json.gz`: the Chrome/Perfetto trace of the profiled steps;
- `<case_id>.breakdown.csv`: per kernel (CUDA) or operator (CPU) time of those steps;
- `<case_id>.memory.pickle`: the CUDA allocator snapshot (`--memory-snapshot`, CUDA only);
- `<case_id>.profile.json`: what the case was, the files, and the core-share check.

For a `step`-scope case whose backend has a separate attention core, the core is also timed
alone (as scope `core` would, after the step's samples) so its latency ratio to the step can be
set beside its share of the profiled step: two measurements of one quantity.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlabench.backends.registry import Prepared, StepInputs
from mlabench.case import Case
from mlabench.measure.nvtx import Mark
from mlabench.measure.timing import TimingSettings, time_step
from mlabench.profiling import breakdown as bd
from mlabench.profiling.request import ProfileRequest
from mlabench.profiling.snapshot import recording
from mlabench.profiling.trace import PROFILE_STEPS, trace_steps
from mlabench.variants.base import AttentionVariant


@dataclass(frozen=True)
class ProfileResult:
    case_id: str
    label: str
    trace: Path
    breakdown_csv: Path
    breakdown: bd.Breakdown
    summary: Path
    snapshot: Path | None = None
    snapshot_note: str | None = None  # why no snapshot was taken though asked for (not CUDA)
    step_ms: float | None = None  # the row's median latency
    core_ms: float | None = None  # the core timed alone (step scope only)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def latency_ratio_pct(self) -> float | None:
        """core/step latency ratio from the timing scope, in percent."""
        if self.core_ms is None or not self.step_ms:
            return None
        return 100.0 * self.core_ms / self.step_ms

    def agreement(self) -> str | None:
        """One line setting the core's share of the profiled step beside the core/step latency ratio."""
        share, ratio = self.breakdown.core_share_pct, self.latency_ratio_pct
        if share is None or ratio is None:
            return None
        return (f"attention core: {share:.1f}% of the profiled step (trace) vs core/step latency "
                f"{self.core_ms:.4g}/{self.step_ms:.4g} ms = {ratio:.1f}% (timing scope): "
                f"{abs(share - ratio):.1f} points apart")


@dataclass(frozen=True)
class ProfileTarget:
    """What the case's timed samples ran: the module, its backend's prepared step, the inputs."""

    case: Case
    module: AttentionVariant
    prepared: Prepared
    inputs: StepInputs
    fn: Callable[[], Any]  # the timed call (the step, or the core alone in scope core)
    step_ms: float


def profile_case(target: ProfileTarget, request: ProfileRequest, device: torch.device, timing: TimingSettings,
                 mark: Mark) -> ProfileResult:
    assert request.out_dir is not None
    case, out = target.case, request.out_dir
    out.mkdir(parents=True, exist_ok=True)  # checked writable before the run (request.check_request)
    stem = case.case_id
    notes: list[str] = []
    why_not: str | None = None
    core_ms = None
    whole_step = case.scope == "step" and target.prepared.core is not None
    if whole_step:
        core_ms = _time_core_alone(target, device, timing)
    trace_path = out / f"{stem}.trace.json.gz"
    snapshot_path = out / f"{stem}.memory.pickle"
    snapshot: Path | None = None
    if request.memory_snapshot:
        with recording(device, snapshot_path) as why_not:
            events, core_seen = trace_steps(target.fn, device, trace_path, mark, target.module if whole_step else None)
        if not why_not:
            snapshot = snapshot_path
    else:
        events, core_seen = trace_steps(target.fn, device, trace_path, mark, target.module if whole_step else None)
    if case.scope == "step" and not whole_step:
        notes.append(f"{case.backend} has no separate attention core in its step (compiled whole): no core share")
    elif whole_step and not core_seen:
        notes.append("the step never called the module's core: no core share")
    result = bd.from_events(events, PROFILE_STEPS, device.type == "cuda")
    csv_path = out / f"{stem}.breakdown.csv"
    result.write_csv(csv_path)
    summary_path = out / f"{stem}.profile.json"
    profile = ProfileResult(stem, case.label(), trace_path, csv_path, result, summary_path, snapshot, why_not,
                            target.step_ms, core_ms, tuple(notes))
    summary_path.write_text(json.dumps(_summary(profile, case), indent=2, default=str) + "\n", encoding="utf-8")
    return profile


def _time_core_alone(target: ProfileTarget, device: torch.device, timing: TimingSettings) -> float:
    """Median latency of the backend's core alone on this step's core inputs, timed as scope core times it."""
    core = target.prepared.core
    assert core is not None
    with torch.no_grad():
        q, k, v, scale, causal = target.module.core_inputs(target.inputs.x, target.inputs.start_pos)
    samples = time_step(lambda: core(q, k, v, scale, causal), device, timing).samples_ms
    return statistics.median(samples)


def _summary(p: ProfileResult, case: Case) -> dict[str, Any]:
    top = p.breakdown.table.head(10)
    return {
        "case_id": p.case_id,
        "case": p.label,
        "key": case.key,
        "files": {
            "trace": p.trace.name,  # open in https://ui.perfetto.dev or chrome://tracing
            "breakdown": p.breakdown_csv.name,
            "memory_snapshot": p.snapshot.name if p.snapshot else None,  # drop into https://pytorch.org/memory_viz
        },
        "memory_snapshot_note": p.snapshot_note,
        "breakdown_unit": p.breakdown.unit,
        "top": top.to_dict(orient="records"),
        "core_share_pct": p.breakdown.core_share_pct,
        "step_latency_ms": p.step_ms,
        "core_latency_ms": p.core_ms,
        "core_step_latency_ratio_pct": p.latency_ratio_pct,
        "notes": list(p.notes),
    }
