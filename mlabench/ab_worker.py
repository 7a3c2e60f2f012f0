"""One side of `mlabench ab`: a server that imports the side's code once and runs every round in a fresh process.

`python -m mlabench.ab_worker '<json>'` (suite, device, settings, out: the side's
run directory) imports torch and the side's mlabench, then waits for `round R` on
stdin. For each round it starts a fresh process (`start_round`), which plans the
suite, runs round R once in that round's seeded order (`rounds.round_order`, the
same on both sides) into `out/rounds/RRR`, and exits. A process that lives for
the whole job would share whatever it drew at start (allocator state, memory
layout, thread placement) with every round, and pairing rounds cannot see a
difference that is constant within a process; a process per round makes that
part of the round-to-round noise the gate measures (pyperf's many short workers).

The fresh process is forked from this server, which has imported torch but never
initialised CUDA, so the start costs milliseconds instead of a torch import;
where CUDA is already initialised here (it never is, but a fork would inherit a
context the child cannot use) or the platform has no fork, it is spawned.
Forked children share the server's address-space layout from the import; their
allocations, threads and caches are their own.

Inside a round the driver gives the two sides turns case by case: before each
case the round's process announces it and waits for `go`. Protocol (JSON lines on
the original stdout; all other output goes to stderr, the side's log):
server: {"server": PROTOCOL, "import_s": s}; per round: {"started": R, "setup_s": s, "pid": p}
(once planned), then per case {"ready": case_id, "step": i, "total": n} -> reads
`go` -> {"done": case_id, "status": ...}; {"finished": rows} or {"error": line};
then the server's {"round_end": R, "code": exit code}. SIGINT is ignored: the
driver decides when to stop, between rounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

PROTOCOL = 2  # 2: a fresh process per round; the driver checks it before using this worker


def _send(proto: IO[str], message: dict[str, Any]) -> None:
    proto.write(json.dumps(message) + "\n")
    proto.flush()


def run_round(args: dict[str, Any], round_index: int, proto: IO[str], started: float) -> int:
    """Round `round_index` of the side's suite, in this process: 0 all ok, 1 some case failed, 2 it
    could not run (its reason sent as one `error` line). `started`: when the server began starting
    this process (perf_counter is the system's monotonic clock, shared by parent and child)."""
    from mlabench.config import ShapeError
    from mlabench.errors import MlabenchError
    from mlabench.measure.envinfo import resolve_device
    from mlabench.rounds import round_order
    from mlabench.settings import SweepSettings
    from mlabench.suites import load_suite
    from mlabench.sweep import Overrides, plan_sweep, run_sweep

    try:
        # One pass per process; the float64 accuracy check (deterministic) in the first round only.
        given = {**args.get("settings", {}), "rounds": 1}
        given["accuracy"] = bool(given.get("accuracy", True)) and round_index == 0
        settings = SweepSettings.check(given, "ab")
        plan = plan_sweep(load_suite(args["suite"]), resolve_device(args.get("device", "auto")),
                          Overrides(settings=settings), Path(args["out"]) / "rounds" / f"{round_index:03d}")
        plan.cases = round_order(plan.cases, plan.settings.seed, round_index)
    except (MlabenchError, ShapeError, OSError) as exc:
        _send(proto, {"error": str(exc)})
        return 2
    _send(proto, {"started": round_index, "setup_s": time.perf_counter() - started, "pid": os.getpid()})

    def on_start(case: Any, step: int, total: int) -> None:
        _send(proto, {"ready": case.case_id, "step": step, "total": total})
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(3)  # the driver went away: stop without writing half a run

    def on_end(result: Any) -> None:
        _send(proto, {"done": result.row["case_id"], "status": result.status})

    try:
        outcome = run_sweep(plan, resume=False, probe=False, on_start=on_start, on_end=on_end)
    except MlabenchError as exc:
        _send(proto, {"error": str(exc)})
        return 2
    _send(proto, {"finished": len(outcome.results)})
    return 1 if outcome.failed else 0


def _forked(args: dict[str, Any], round_index: int, proto: IO[str]) -> int:
    started = time.perf_counter()
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code = 70  # an unexpected exception: its traceback is in the log
    try:
        code = run_round(args, round_index, proto, started)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def start_round(args: dict[str, Any], round_index: int, proto: IO[str]) -> int:
    """Run one round in a fresh process and return its exit code: the one place a round's process starts."""
    import torch

    if hasattr(os, "fork") and not torch.cuda.is_initialized():
        return _forked(args, round_index, proto)
    # Spawned: the child speaks the protocol on the same channel and reads `go` from the same stdin.
    child = json.dumps({**args, "round": round_index, "started": time.perf_counter()})
    return subprocess.run([sys.executable, "-m", "mlabench.ab_worker", child], stdout=proto.fileno(),
                          check=False).returncode


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    args: dict[str, Any] = json.loads(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole process group
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library and torch output must not corrupt the protocol
    if args.get("round") is not None:  # a spawned round (start_round without fork)
        return run_round(args, int(args["round"]), proto, float(args.get("started", started)))
    import torch  # noqa: F401 - the import every round's process would otherwise pay

    import mlabench.sweep  # noqa: F401

    _send(proto, {"server": PROTOCOL, "import_s": time.perf_counter() - started})
    while True:
        command = sys.stdin.readline().split()  # readline, not iteration: no read-ahead past this line
        if len(command) != 2 or command[0] != "round":
            return 0  # end of input or `quit`
        code = start_round(args, int(command[1]), proto)
        _send(proto, {"round_end": int(command[1]), "code": code})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
