"""Run a function in a fresh child process for the price of a fork: `run_isolated(fn, *args)`.

A fresh process per case (or per `ab` round) is what keeps a crashing kernel from taking the
sweep down and one round's warm caches out of the next; starting an interpreter and importing
torch for each costs seconds. Here the standard library's fork server does that once: the
first call starts one server process (`multiprocessing`'s "forkserver" start method) that
imports torch and the modules asked for (`warm`), and every call after that forks a child
from it. The child applies the caller's current environment (a Ray worker's GPU assignment
changes per task), imports what `imports` names, runs `fn(*args)` and sends back its value.
Every way a child can end becomes an `Outcome`: a value, an exception, a signal (SIGABRT,
SIGSEGV, SIGKILL from the OOM killer), an exit code, or a timeout (the child is killed with
the processes it started). `Outcome.error` says which, in words.

The server is a new interpreter started with exec, not a fork of the caller, and it never
touches CUDA: a CUDA context (or any thread) in the caller does not make its children unsafe,
so fork is safe wherever the platform has a fork server (Linux, macOS). Elsewhere the calls
fall back to the "spawn" start method (an interpreter per call), said once on stderr.

Nothing outlives the caller. The server asks Linux to kill it when the caller dies
(PR_SET_PDEATHSIG) once it has imported this module, before the modules it preloads; every
child it forks does the same towards the server before any Python code of its own runs (an
at-fork hook), and leaves the caller's terminal session (Ctrl-C reaches the caller alone, which
decides what to stop). Each checks its parent right after, which closes the race with a parent
that died just before: a server whose caller died while it started ends without forking.
Linux sends that signal when the *thread* that started the server ends: call `warm` (or the
first `run_isolated`) from a thread that lives as long as the process, such as the main one.

`fn`, its arguments and its value cross a pipe, so they must pickle (`fn` a module-level
function). The server imports the caller's main script once (so that no child runs it again):
as with every start method but plain fork, a script keeps its work under
`if __name__ == "__main__":`. The child's stdout and stderr go to a file of their own; the last line printed
comes back in the `Outcome` (the message of a native crash).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Set in the server's environment by the process that starts it, to its own pid: importing this
# module in a process that finds it arms the server (below) and nothing else does.
SERVER_PARENT_ENV = "MLABENCH_FORKSERVER_PARENT"
# The caller's main script and its arguments (JSON), for the server to import once (`_arm_server`).
SERVER_MAIN_ENV = "MLABENCH_FORKSERVER_MAIN"
# From the child's start to its "ready" (the caller's imports done): a child stuck before it is
# stuck for good (a hung file system), and becomes an error rather than a wait without end.
STARTUP_LIMIT_S = 600.0
# What every server imports before forking anything: what all callers need, once.
BASE_PRELOAD = ("torch",)

_PR_SET_PDEATHSIG = 1
_lock = threading.Lock()
_warned_spawn = False
_server_pid: int | None = None  # in an armed server: its pid; in its children (and theirs): None


@dataclass(frozen=True)
class Outcome:
    """How a child ended. `status`: "ok" (`value` is what `fn` returned), "error" (it raised,
    was killed by a signal, or exited without an answer) or "timeout" (killed past the limit)."""

    status: str
    value: Any = None
    error: str = ""  # in words: "killed by SIGABRT", "raised ValueError: ...", "no answer within 5 s"
    signal: str | None = None  # the signal that ended the child, "SIGABRT"
    exitcode: int | None = None  # the child's exit status (negative: a signal), when known
    output: str = ""  # the last line the child printed
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when `parent` (the thread that started it) ends; if `parent`
    is already gone (this process was re-parented before the request), end now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: an orphan finishes its work and exits
    if os.getppid() != parent:
        os._exit(1)


def _after_fork() -> None:
    """At-fork hook in an armed server's children, and in what they fork in turn: the first steps
    for the server's own children only (a case's process that forks keeps its children as they are)."""
    global _server_pid
    server, _server_pid = _server_pid, None
    if server is not None:
        _child_first_steps(server)


def _child_first_steps(server: int) -> None:
    """A child's first steps: dies with `server` (its parent), in a session of its own."""
    _die_with_parent(server)
    try:
        os.setsid()  # its own session and process group: Ctrl-C spares it; a kill takes its helpers too
    except OSError:
        pass


def _arm_server() -> None:
    """In a fork server started by `warm`: die with the caller, and make each child do the same.

    It also imports the caller's main script (a console script, a Ray worker's), as multiprocessing
    means a "__main__" preload to: each child otherwise runs that script again before its function
    (a Ray worker's costs it seconds), since Python 3.11's server drops the path it is given."""
    parent = os.environ.pop(SERVER_PARENT_ENV, None)
    main = os.environ.pop(SERVER_MAIN_ENV, None)
    if parent is None:
        return
    global _server_pid
    _die_with_parent(int(parent))
    _server_pid = os.getpid()
    os.register_at_fork(after_in_child=_after_fork)
    if main:
        from multiprocessing import spawn

        path, sys.argv = json.loads(main)  # what the script sees, as it would in each child
        try:
            spawn.import_main_path(path)
        except Exception:  # each child runs it again and reports what fails
            pass


def _context(preload: Iterable[str]) -> multiprocessing.context.BaseContext:
    """The fork server's context, the server started and armed (preloading `preload` if this
    starts it); the spawn context where the platform has no fork server."""
    global _warned_spawn
    if "forkserver" not in multiprocessing.get_all_start_methods():
        if not _warned_spawn:
            _warned_spawn = True
            print("mlabench: no fork server on this platform: each isolated call starts a new interpreter "
                  "(spawn), seconds each", file=sys.stderr)
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver, spawn

    ctx = multiprocessing.get_context("forkserver")
    with _lock:
        # This module first: the server arms itself before the long imports.
        ctx.set_forkserver_preload(list(dict.fromkeys((__name__, *BASE_PRELOAD, *preload))))
        main = spawn.get_preparation_data("server").get("init_main_from_path")
        told = {SERVER_PARENT_ENV: str(os.getpid())}
        if main:
            told[SERVER_MAIN_ENV] = json.dumps([main, sys.argv])
        previous = {name: os.environ.get(name) for name in told}
        os.environ.update(told)
        try:
            forkserver.ensure_running()  # a no-op while the server lives; restarts one that died
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return ctx


def warm(preload: Sequence[str] = ()) -> None:
    """Start the fork server now, importing torch and `preload` (module names) once for every
    child. A server already running keeps what it imported; children import anything else."""
    _context(preload)


def _child(fn: Callable[..., Any], args: tuple[Any, ...], conn: multiprocessing.connection.Connection,
           env: dict[str, str], log_path: str, imports: tuple[tuple[str, str | None], ...], parent: int,
           forked: bool) -> None:
    """The child's side: its own output file, the caller's environment, the imports, then `fn`."""
    if not forked:  # spawn: a new interpreter, not forked by an armed server
        _child_first_steps(parent)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(env)
    for module, root in imports:
        if root and root not in sys.path:
            sys.path.append(root)
        importlib.import_module(module)
    conn.send(("ready",))
    try:
        value = fn(*args)
    except BaseException as exc:
        traceback.print_exc()
        conn.send(("raised", f"{type(exc).__name__}: {exc}".strip()))
        return
    try:
        conn.send(("value", value))
    except Exception as exc:  # an answer that does not pickle
        conn.send(("raised", f"its result could not be sent back ({type(exc).__name__}: {exc})"))


def call_pickled(target: str, payload: bytes) -> bytes:
    """In a child: `target` ("module:function") applied to the pickled argument tuple `payload`,
    its value pickled. See `run_pickled`."""
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return pickle.dumps(fn(*pickle.loads(payload)))


def run_pickled(target: str, payload: bytes, **how: Any) -> Outcome:
    """`run_isolated` of `target` ("module:function") on pickled arguments, the value coming back
    pickled (`Outcome.value` is bytes): the caller passes both through without unpickling them, so
    it need not import what they need. A Ray worker runs cases this way without importing torch;
    only the fork server and its children do. `how`: `run_isolated`'s keywords."""
    return run_isolated(call_pickled, target, payload, **how)


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    """The child and whatever it started (torch.compile's workers) share its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError, TypeError):
        proc.kill()
    proc.join()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float | None = None,
                 imports: Sequence[tuple[str, str | None]] = (), preload: Sequence[str] = (),
                 start_limit: float = STARTUP_LIMIT_S) -> Outcome:
    """`fn(*args)` in a fresh child forked from the warm server; how it ended, never an exception
    from the child. `timeout`: seconds from the child's "ready" (its `imports` done) to its answer,
    after which it is killed (None: no limit). `imports`: (module, the sys.path entry it lives
    under or None) imported in the child before `fn`, e.g. plugins that register things.
    `preload`: modules for the server to import, if this call starts it (see `warm`).

    KeyboardInterrupt (Ctrl-C in the caller) kills the child and propagates."""
    ctx = _context(preload)
    forked = ctx.get_start_method() == "forkserver"
    reader, writer = ctx.Pipe(duplex=False)
    fd, log_path = tempfile.mkstemp(prefix="mlabench-child-", suffix=".log")
    os.close(fd)
    started = time.perf_counter()
    proc = ctx.Process(target=_child, name=getattr(fn, "__name__", "isolated"), daemon=False,
                       args=(fn, args, writer, dict(os.environ), log_path, tuple(imports), os.getpid(), forked))
    try:
        try:
            proc.start()
        except (EOFError, OSError) as exc:  # the server died while starting (a failed import)
            return Outcome("error", error=f"the fork server could not start a child ({type(exc).__name__}: {exc})",
                           output=_last_line(log_path), wall_s=time.perf_counter() - started)
        finally:
            writer.close()  # the child holds its end; EOF on ours then means the child is gone
        try:
            return _await(proc, reader, timeout, start_limit, log_path, started)
        except BaseException:
            _kill(proc)
            raise
    finally:
        reader.close()
        os.unlink(log_path)


def _await(proc: multiprocessing.process.BaseProcess, reader: multiprocessing.connection.Connection,
           timeout: float | None, start_limit: float, log_path: str, started: float) -> Outcome:
    ready = False
    deadline = time.monotonic() + start_limit
    while True:
        left = deadline - time.monotonic() if deadline is not None else None
        if left is not None and left <= 0:
            _kill(proc)
            wall = time.perf_counter() - started
            what = f"no answer within {timeout:g} s" if ready else f"did not start within {start_limit:g} s"
            return Outcome("timeout" if ready else "error", error=what, exitcode=proc.exitcode,
                           output=_last_line(log_path), wall_s=wall)
        if not multiprocessing.connection.wait([reader], left):
            continue
        try:
            message = reader.recv()
        except (EOFError, OSError):
            break  # the child is gone without an answer
        if message[0] == "ready":
            ready = True
            deadline = None if timeout is None else time.monotonic() + timeout
            continue
        proc.join()
        wall = time.perf_counter() - started
        if message[0] == "value":
            return Outcome("ok", value=message[1], exitcode=proc.exitcode, wall_s=wall)
        return Outcome("error", error=f"raised {message[1]}", exitcode=proc.exitcode,
                       output=_last_line(log_path), wall_s=wall)
    proc.join()
    code = proc.exitcode if proc.exitcode is not None else 255
    name = _signal_name(code) if code < 0 else None
    how = f"killed by {name}" if name else f"exited with code {code}"
    return Outcome("error", error=how, signal=name, exitcode=code, output=_last_line(log_path),
                   wall_s=time.perf_counter() - started)


__all__ = ["Outcome", "call_pickled", "run_isolated", "run_pickled", "warm"]

_arm_server()  # last: a main script it imports may import this module's names
