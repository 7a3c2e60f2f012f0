"""Running one case in a fresh child process, so that whatever kills it cannot kill the sweep.

`isolate_case(case, ctx)` runs the case with the in-process runner in a child forked from a warm
fork server (executors/forkserver.py: torch and mlabench are imported once per driver, not
once per case) and turns every way the child can end into a row. A child that dies (segfault,
`os.abort()`, an illegal memory access that would take the driver down, the OOM killer)
becomes an `error` row naming the signal and the last line it printed; one that gives no
answer past the case's wall limit (a hung kernel: the in-process check between calls cannot
cut a call that never returns) is killed, with the processes it started, and becomes a
`timeout` row. Either way the caller goes on with the next case.

The child initialises its own device (CUDA, NVML): the driver and the fork server never touch
the GPU, so a sticky CUDA error costs one case, not the sweep. It dies with the driver and sits
outside the driver's terminal session (Ctrl-C reaches the driver alone, which finishes or
abandons the case as it decides: cli/sweep_cmd.py `_Stopper`).

Variants and backends registered outside mlabench (a plugin module) are imported by the
child before the case runs, from the path entry the driver found them under.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from mlabench import schema
from mlabench.case import Case
from mlabench.executors.forkserver import Outcome, run_pickled, warm
from mlabench.measure.envinfo import cpu_model
from mlabench.runner import CaseResult, RunContext, analytic_columns

# The in-process deadline check ends a slow case with its own `timeout` row after the call in
# flight returns; the driver kills only a child still silent past the limit plus this grace
# (at most the limit itself, so a short limit is not dwarfed by it).
KILL_GRACE_S = 5.0


def kill_after(timeout_s: float) -> float:
    return timeout_s + min(KILL_GRACE_S, timeout_s)


@dataclass(frozen=True)
class Job:
    """What the child needs: the case, the run's settings (without the driver's NVML handle,
    which the child opens itself) and the plugin modules to import first."""

    case: Case
    ctx: RunContext
    plugins: tuple[tuple[str, str | None], ...] = ()  # (module, the sys.path entry it was found under)
    # The device kind `ctx.peaks` were measured on; a child on another kind (a mixed cluster)
    # uses its own kind's spec peaks, so roofline_pct is never against another GPU's roof.
    peaks_for: str | None = None


@dataclass
class Isolated:
    """A child's answer: the case's result, the host and the fingerprint of the device it used."""

    result: CaseResult
    host: str = ""
    device: dict[str, Any] = field(default_factory=dict)


def plugin_modules(cases: list[Case]) -> tuple[tuple[str, str | None], ...]:
    """Modules outside mlabench that define the cases' variants or backends, with the path
    entry each was imported from (a test directory, a project checkout), for the child."""
    from mlabench.backends import BACKENDS
    from mlabench.variants import VARIANT_CLASSES

    names: list[str] = []
    for case in cases:
        for obj in (BACKENDS[case.backend].prepare, VARIANT_CLASSES[case.variant]):
            module = getattr(obj, "__module__", "") or ""
            if module and module != "__main__" and module.split(".")[0] != "mlabench" and module not in names:
                names.append(module)
    return tuple((name, _import_root(name)) for name in names)


def _import_root(module: str) -> str | None:
    """The sys.path entry under which `module` was found: its file minus the module's path parts."""
    path = getattr(sys.modules.get(module), "__file__", None)
    if not path:
        return None
    root = os.path.dirname(os.path.abspath(path))
    depth = module.count(".") + (1 if os.path.basename(path) == "__init__.py" else 0)
    for _ in range(depth):
        root = os.path.dirname(root)
    return root


def failed_row(case: Case, status: str, error: str, wall_s: float, host: str | None = None,
               device: torch.device | None = None) -> schema.ResultRow:
    """The row of a case that produced none itself: its key, its analytic columns, what happened
    and where (`host`, default this machine; the CPU model for a CPU case; a GPU is not named, since
    asking CUDA would open a context in a process that must leave the GPU to the cases)."""
    name = cpu_model() if device is not None and device.type == "cpu" else ""
    return schema.ResultRow.from_mapping({
        **case.key, **analytic_columns(case), "case_id": case.case_id, "status": status, "error": error[:300],
        "wall_s": round(wall_s, 3), "host": socket.gethostname() if host is None else host, "device_name": name})


def _case_in_child(job: Job) -> Isolated:
    """In the child: the case on its device, with the in-process runner."""
    from mlabench.measure.envinfo import device_info
    from mlabench.measure.memory import open_nvml
    from mlabench.measure.peaks import spec_peaks
    from mlabench.runner import where
    from mlabench.tp import run_any_case

    ctx = job.ctx
    kind = where(ctx.device)["device_name"]
    if job.peaks_for and kind != job.peaks_for:
        ctx.peaks = spec_peaks(kind, [job.case.dtype])
    if ctx.device.type == "cpu" and ctx.timing.threads:
        torch.set_num_threads(int(ctx.timing.threads))
    ctx.nvml = open_nvml(ctx.device)
    result = run_any_case(job.case, ctx)  # a tp > 1 case on ranks this child starts
    # The CUDA context dies with this process: a sticky error costs this case only, not the sweep.
    result.fatal = False
    try:
        device = device_info(ctx.device)
    except Exception:  # a lost CUDA context may refuse even this; the row is what matters
        device = {"type": ctx.device.type, "name": result.row.get("device_name")}
    return Isolated(result, socket.gethostname(), device)


# What every case needs imported: this module (the runner, variants, backends) and what the CPU
# timer imports on first use (torch.utils.benchmark, half a second). A server started without
# them (by another caller in this process) leaves them to each child, before its wall limit starts.
CASE_MODULES = (__name__, "torch.utils.benchmark")
# The child's side of a case and of a device description, for `forkserver.run_pickled`.
CASE_IN_CHILD = f"{__name__}:_case_in_child"
DESCRIBE_IN_CHILD = f"{__name__}:describe_device"


def case_modules(cases: Iterable[Case] = ()) -> tuple[str, ...]:
    """What a fork server preloads for `cases`: CASE_MODULES, and what their backends ask for
    (`register_backend(preload=...)`: torch.compile's start-up for `compiled`), so that each
    child does not pay for it again."""
    from mlabench.backends import BACKENDS

    asked = [m for case in cases if case.backend in BACKENDS for m in BACKENDS[case.backend].preload]
    return tuple(dict.fromkeys((*CASE_MODULES, *asked)))


def warm_server(cases: Iterable[Case] = ()) -> None:
    """Start the fork server with what `cases` need imported, so no case pays for it."""
    warm(case_modules(cases))


def child_imports(plugins: tuple[tuple[str, str | None], ...]) -> tuple[tuple[str, str | None], ...]:
    """What a case's child imports before its wall limit starts: what a server started by another
    caller may lack, and the plugins."""
    return tuple((module, None) for module in CASE_MODULES) + plugins


def case_payload(case: Case, ctx: RunContext, plugins: tuple[tuple[str, str | None], ...] = (),
                 peaks_for: str | None = None) -> bytes:
    """The pickled job for CASE_IN_CHILD (the driver's NVML handle left out: the child opens its own)."""
    return pickle.dumps((Job(case, replace(ctx, nvml=None), plugins, peaks_for),))


def answer(outcome: Outcome, case: Case, ctx: RunContext) -> Isolated:
    """The child's answer to CASE_IN_CHILD, or the row of how it ended without one."""
    if outcome.ok:
        value = pickle.loads(outcome.value)
        assert isinstance(value, Isolated)
        return value
    if outcome.status == "timeout":
        error = (f"killed: no answer {kill_after(ctx.timeout_s):g} s into a case with a wall limit of "
                 f"{ctx.timeout_s:g} s (a call that never returned)")
    else:
        error = f"the case's process {outcome.error} before it reported" + (f": {outcome.output}"
                                                                            if outcome.output else "")
    row = failed_row(case, outcome.status, error, outcome.wall_s, device=ctx.device)
    return Isolated(CaseResult(row, []))


def isolate_case(case: Case, ctx: RunContext, plugins: tuple[tuple[str, str | None], ...] = (),
                 peaks_for: str | None = None) -> Isolated:
    """Run `case` in a fresh child process; every way it can end becomes a row.

    KeyboardInterrupt (a second Ctrl-C in the driver) kills the child and propagates."""
    outcome = run_pickled(CASE_IN_CHILD, case_payload(case, ctx, plugins, peaks_for),
                          timeout=kill_after(ctx.timeout_s), imports=child_imports(plugins),
                          preload=case_modules([case]))
    return answer(outcome, case, ctx)


def describe_device(device: torch.device, dtypes: list[str], probe: bool, threads: int) -> tuple[dict[str, Any], Any]:
    """In a child: the fingerprint and roofline peaks of the device cases get there (CPU peaks with
    the cases' thread count). A GPU's context dies with the child, as a case's does."""
    from mlabench.measure.envinfo import device_info
    from mlabench.measure.peaks import measure_peaks

    if device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
    return device_info(device), measure_peaks(device, dtypes, probe)
