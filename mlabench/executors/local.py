"""Executors whose cases run on this machine's device: `local` (each case in this process, one
after another) and `isolate` (each case in a child forked from a warm server, executors/isolate.py).
Both inherit `OnThisMachine`'s answers to the driver's questions.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from mlabench.case import Case
from mlabench.executors.protocol import OnStart
from mlabench.runner import CaseResult, RunContext
from mlabench.tp import run_any_case

if TYPE_CHECKING:
    import torch

    from mlabench.measure.peaks import Peaks


class OnThisMachine:
    """The driver's side of an executor whose cases run on this machine's device: nothing to
    describe remotely, peaks measured here, nothing to close."""

    device_meta: dict[str, Any] | None = None

    def resolve_device(self, name: str) -> torch.device:
        from mlabench.measure.envinfo import resolve_device

        return resolve_device(name)

    def describe(self, plan: Any, probe: bool) -> None:
        return None

    def peaks(self, dtypes: list[str], probe: bool) -> Peaks | None:
        return None

    def close(self) -> None:
        return None


class LocalExecutor(OnThisMachine):
    """Every case in this process: cheapest, but a crash in a case is a crash of the sweep."""

    name = "local"

    def __init__(self, run: Callable[[Case, RunContext], CaseResult] = run_any_case) -> None:
        self._run = run

    def run(self, cases: list[Case], ctx: RunContext, on_start: OnStart | None,
            should_stop: Callable[[], bool]) -> Generator[CaseResult, None, None]:
        for i, case in enumerate(cases):
            if should_stop():
                return
            if on_start:
                on_start(case, i, len(cases))
            yield self._run(case, ctx)


class IsolateExecutor(OnThisMachine):
    """Every case in a fresh child process, one at a time, on the driver's device."""

    name = "isolate"

    def describe(self, plan: Any, probe: bool) -> None:
        """Starts the fork server (executors/forkserver.py) with what the plan's cases need
        imported: its imports overlap the driver's opening the run directory."""
        from mlabench.executors.isolate import warm_server

        warm_server(plan.cases)

    def run(self, cases: list[Case], ctx: RunContext, on_start: OnStart | None,
            should_stop: Callable[[], bool]) -> Generator[CaseResult, None, None]:
        from mlabench.executors.isolate import isolate_case, plugin_modules, warm_server

        plugins = plugin_modules(cases)
        warm_server(cases)
        for i, case in enumerate(cases):
            if should_stop():
                return
            if on_start:
                on_start(case, i, len(cases))
            answer = isolate_case(case, ctx, plugins)
            answer.result.device = answer.device or None
            yield answer.result


__all__ = ["IsolateExecutor", "LocalExecutor", "OnThisMachine"]
