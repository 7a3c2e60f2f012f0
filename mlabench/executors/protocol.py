"""What an executor is: the `Executor` protocol the sweep driver programs against, and the
`OnStart` callback type. Every executor module imports this one, never the package, so the
package can import its executors without a cycle.

`run(cases, ctx, on_start, should_stop)` yields results as cases finish, in any order.
`on_start(case, done, total)` is called as a case starts (`done`: results yielded so far),
and `should_stop()` is polled before a case starts: once it is true no new case starts,
and the cases in flight finish. Closing the iterator (the driver stopping early, a second
Ctrl-C) abandons the cases in flight.

The driver (the `sweep` command) needs more than `run` from any executor, and the protocol
declares it: `resolve_device` (which device `--device` names where the cases run),
`describe` (fingerprint and peaks taken there before the run directory opens),
`device_meta` and `peaks` (what `describe` found; None: this process's device decides),
and `close` (release what the executor started).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from mlabench.case import Case
from mlabench.runner import CaseResult, RunContext

if TYPE_CHECKING:
    import torch

    from mlabench.measure.peaks import Peaks

OnStart = Callable[[Case, int, int], None]


class Executor(Protocol):
    name: str
    device_meta: dict[str, Any] | None  # the cases' device fingerprint when it is not this process's

    def resolve_device(self, name: str) -> torch.device: ...

    def describe(self, plan: Any, probe: bool) -> None: ...

    def peaks(self, dtypes: list[str], probe: bool) -> Peaks | None: ...

    def run(self, cases: list[Case], ctx: RunContext, on_start: OnStart | None,
            should_stop: Callable[[], bool]) -> Generator[CaseResult, None, None]: ...

    def close(self) -> None: ...
