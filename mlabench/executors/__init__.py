"""Executors: where a sweep's cases run. The driver (sweep.run_sweep) alone writes rows.

An executor turns the list of unfinished cases into results as they finish, in any
order; the driver appends each to the run directory as it arrives, so a stop keeps
every finished row whichever executor ran it.

- `local`: in this process, one case after another (the default).
- `isolate`: one case after another, each in a child forked from a warm server (executors/isolate.py).
- `ray`: each case a Ray task whose worker runs it isolated (executors/ray_exec.py).

The `Executor` protocol each of them follows, and the `OnStart` callback type, live in
executors/protocol.py. The in-process executors inherit `OnThisMachine`'s answers to the
driver's questions; Ray's come from its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from mlabench.case import Case
from mlabench.errors import UsageError
from mlabench.executors.protocol import Executor, OnStart
from mlabench.runner import CaseResult, RunContext
from mlabench.tp import run_any_case

if TYPE_CHECKING:
    import torch

    from mlabench.measure.peaks import Peaks

EXECUTORS: tuple[str, ...] = ("local", "isolate", "ray")

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

    def __init__(self) -> None:
        """Starts the fork server (executors/forkserver.py): its imports overlap the driver's setting up."""
        from mlabench.executors.isolate import warm_server

        warm_server()

    def run(self, cases: list[Case], ctx: RunContext, on_start: OnStart | None,
            should_stop: Callable[[], bool]) -> Generator[CaseResult, None, None]:
        from mlabench.executors.isolate import isolate_case, plugin_modules, warm_server

        plugins = plugin_modules(cases)
        warm_server()
        for i, case in enumerate(cases):
            if should_stop():
                return
            if on_start:
                on_start(case, i, len(cases))
            answer = isolate_case(case, ctx, plugins)
            answer.result.device = answer.device or None
            yield answer.result


def choose_executor(name: str | None, isolate: bool, ray_address: str | None,
                    ray_accelerator: str | None = None) -> str:
    """The executor the flags ask for, checked before any work. `--isolate` is `--executor
    isolate`; with `--executor ray` it changes nothing (Ray workers isolate every case)."""
    if name is not None and name not in EXECUTORS:
        raise UsageError(f"--executor: unknown executor {name!r} (choose from {', '.join(EXECUTORS)})")
    if isolate and name == "local":
        raise UsageError("--isolate contradicts --executor local (drop one)")
    chosen = name or ("isolate" if isolate else "local")
    if ray_address is not None and chosen != "ray":
        raise UsageError("--ray-address needs --executor ray")
    if ray_accelerator is not None and chosen != "ray":
        raise UsageError("--ray-accelerator needs --executor ray")
    return chosen


def make_executor(name: str, ray_address: str | None = None, ray_accelerator: str | None = None,
                  run: Callable[[Case, RunContext], CaseResult] = run_any_case) -> Executor:
    """The executor `name` (checked by `choose_executor`), connected: Ray joins or starts its
    cluster here. `run`: how the local executor runs one case."""
    if name == "ray":
        from mlabench.executors.ray_exec import RayExecutor

        return RayExecutor.connect(ray_address, ray_accelerator)
    return IsolateExecutor() if name == "isolate" else LocalExecutor(run)


__all__ = ["EXECUTORS", "Executor", "IsolateExecutor", "LocalExecutor", "OnStart", "OnThisMachine", "choose_executor",
           "make_executor"]
