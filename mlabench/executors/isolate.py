"""Running one case in a fresh child process, so that whatever kills it cannot kill the sweep.

`run_isolated(case, ctx)` starts `python -m mlabench.executors.child`, hands it the case and
the run's settings (pickled on stdin) and reads back the row and samples on a pipe of its
own (the child's stdout and stderr may carry anything a library prints). A child that dies
(segfault, `os.abort()`, an illegal memory access that takes the driver down, the OOM killer)
becomes an `error` row naming the signal and the last line it printed; one that gives no
answer past the case's wall limit (a hung kernel: the in-process check between calls cannot
cut a call that never returns) is killed, with the processes it started, and becomes a
`timeout` row. Either way the caller goes on with the next case.

The child runs in its own session: Ctrl-C in the terminal reaches the driver alone, which
finishes or abandons the case as it decides (cli/sweep_cmd.py `_Stopper`). The child asks
the kernel to kill it when the driver dies, so a killed sweep leaves no orphan measuring on.

Variants and backends registered outside mlabench (a plugin module) are imported by the
child before the case runs: the child is a new interpreter and knows only what it imports.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import torch

from mlabench import schema
from mlabench.case import Case
from mlabench.measure.envinfo import cpu_model
from mlabench.runner import CaseResult, RunContext, analytic_columns

# A child that has not imported torch and mlabench within this is stuck (a hung file system,
# a broken install): the case becomes an error row rather than a wait without end.
STARTUP_LIMIT_S = 600.0
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


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _last_line(log: Any) -> str:
    log.seek(0)
    lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The child and whatever it started (torch.compile's workers) share its session's group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def run_isolated(case: Case, ctx: RunContext, plugins: tuple[tuple[str, str | None], ...] = (),
                 peaks_for: str | None = None) -> Isolated:
    """Run `case` in a fresh child process; every way it can end becomes a row.

    KeyboardInterrupt (a second Ctrl-C in the driver) kills the child and propagates."""
    job = Job(case, replace(ctx, nvml=None), plugins, peaks_for)
    started = time.perf_counter()
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlabench.executors.child", str(write_fd)],
                stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(write_fd,), start_new_session=True,
            )
        finally:
            os.close(write_fd)  # the child holds its end; EOF on ours then means the child is gone
        conn = Connection(read_fd, writable=False)
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(pickle.dumps(job))
                proc.stdin.close()
            except BrokenPipeError:
                pass  # died at once; reported below from its exit status
            answer = _wait(conn, ctx.timeout_s)
        except BaseException:
            _kill(proc)
            raise
        finally:
            conn.close()
        wall = time.perf_counter() - started
        if isinstance(answer, Isolated):
            proc.wait()
            return answer
        if answer == "timeout":
            _kill(proc)
            row = failed_row(case, "timeout", f"killed: no answer {kill_after(ctx.timeout_s):g} s into a case with a "
                             f"wall limit of {ctx.timeout_s:g} s (a call that never returned)", wall, device=ctx.device)
            return Isolated(CaseResult(row, []))
        if answer == "startup":
            _kill(proc)
            row = failed_row(case, "error", f"the case's process did not start within {STARTUP_LIMIT_S:g} s", wall,
                             device=ctx.device)
            return Isolated(CaseResult(row, []))
        code = proc.wait()
        how = f"killed by {_signal_name(code)}" if code < 0 else f"exited with code {code}"
        last = _last_line(log)
        row = failed_row(case, "error", f"the case's process {how} before it reported" + (f": {last}" if last else ""),
                         wall, device=ctx.device)
        return Isolated(CaseResult(row, []))


def _wait(conn: Connection, timeout_s: float) -> Isolated | str:
    """The child's answer, or why there is none: 'startup', 'timeout' or 'died'."""
    ready = False
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout" if ready else "startup"
        try:
            if not conn.poll(min(left, 1.0)):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return "died"
        if message == "ready":  # imports done: the case's own wall limit starts now
            ready = True
            deadline = time.monotonic() + kill_after(timeout_s)
        elif isinstance(message, Isolated):
            return message
