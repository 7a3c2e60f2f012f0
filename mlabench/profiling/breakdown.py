"""Where a profiled step's time goes: per kernel (CUDA) or operator (CPU), from torch.profiler's events.

Shares partition the step: on CUDA each kernel (and memcpy/memset) row is its device time
over the sum of all device activity in the profiled steps; on CPU each operator row is its
*self* CPU time (time not spent in a child operator) over the sum of self times, so nested
operators are not counted twice and the shares sum to 100%. The step's own self time
(Python and dispatch between operators) is its own row, `ProfilerStep`.

The core's share of the step is the time inside the `mlabench:core` range (profiling/trace.py
puts the step's attention core in it) over the time inside the step ranges, measured the same
way (CPU time on CPU, device time of the kernels launched inside on CUDA).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

CORE_RANGE = "mlabench:core"
STEP_NAME = "ProfilerStep"
_STEP = re.compile(r"^ProfilerStep(#\d+|\*)$")  # torch names the steps "ProfilerStep#N" or "ProfilerStep*"
COLUMNS = ("name", "calls_per_step", "total_us", "share_pct")


def _is_device(evt: Any) -> bool:
    return str(getattr(evt, "device_type", "")).split(".")[-1] != "CPU"


def _name(evt: Any) -> str:
    return STEP_NAME if _STEP.match(evt.name) else evt.name


def breakdown(events: Iterable[Any], steps: int, on_device: bool) -> pd.DataFrame:
    """Rows (name, calls_per_step, total_us, share_pct), largest first, from profiler FunctionEvents.

    `on_device`: CUDA kernels by device time; else CPU operators by self CPU time."""
    if on_device:
        # Kineto also puts each record_function range on the GPU timeline (gpu_user_annotation):
        # those spans cover kernels already counted, so they are left out.
        rows = [(_name(e), e.device_time_total) for e in events
                if _is_device(e) and _name(e) != STEP_NAME and not e.name.startswith("mlabench:")]
    else:
        rows = [(_name(e), e.self_cpu_time_total) for e in events if not _is_device(e)]
    frame = pd.DataFrame(rows, columns=["name", "total_us"])
    table = frame.groupby("name", sort=False)["total_us"].agg(["size", "sum"]).reset_index()
    table.columns = ["name", "calls", "total_us"]
    total = float(table["total_us"].sum())
    table["calls_per_step"] = table["calls"] / max(steps, 1)
    table["share_pct"] = 100.0 * table["total_us"] / total if total > 0 else 0.0
    return table.sort_values("total_us", ascending=False, kind="stable")[list(COLUMNS)].reset_index(drop=True)


def core_share(events: Iterable[Any], on_device: bool) -> float | None:
    """Percent of the profiled steps' time spent inside the core range; None without a core range."""
    def time(e: Any) -> float:
        return float(e.device_time_total if on_device else e.cpu_time_total)

    core = step = 0.0
    found = False
    for e in events:
        if _is_device(e):
            continue
        if e.name == CORE_RANGE:
            core += time(e)
            found = True
        elif _STEP.match(e.name):
            step += time(e)
    if not found or step <= 0:
        return None
    return 100.0 * core / step


@dataclass(frozen=True)
class Breakdown:
    table: pd.DataFrame
    unit: str  # "CUDA kernel" or "CPU operator (self time)"
    core_share_pct: float | None

    def write_csv(self, path: Path) -> None:
        self.table.to_csv(path, index=False)


def from_events(events: Iterable[Any], steps: int, on_device: bool) -> Breakdown:
    events = list(events)
    unit = "CUDA kernel" if on_device else "CPU operator (self time)"
    return Breakdown(breakdown(events, steps, on_device), unit, core_share(events, on_device))
