"""Which executor the command line asks for, checked before any work (`choose_executor`), and
making it (`make_executor`: Ray joins or starts its cluster here). Choosing imports no torch,
so a command can start Ray's processes before its own imports (executors/ray_cluster.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlabench.errors import UsageError

if TYPE_CHECKING:
    from mlabench.executors.protocol import Executor

EXECUTORS: tuple[str, ...] = ("local", "isolate", "ray")


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
                  run: Callable[..., Any] | None = None) -> Executor:
    """The executor `name` (checked by `choose_executor`), connected: Ray joins or starts its
    cluster here. `run`: how the local executor runs one case (default: `tp.run_any_case`)."""
    if name == "ray":
        from mlabench.executors.ray_exec import RayExecutor

        return RayExecutor.connect(ray_address, ray_accelerator)
    from mlabench.executors.local import IsolateExecutor, LocalExecutor

    if name == "isolate":
        return IsolateExecutor()
    return LocalExecutor(run) if run is not None else LocalExecutor()


__all__ = ["EXECUTORS", "choose_executor", "make_executor"]
