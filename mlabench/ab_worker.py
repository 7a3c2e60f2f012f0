"""One side of `mlabench ab`: a server for the side's code that runs every round in a fresh process.

`python -m mlabench.ab_worker '<json>'` (suite, device, settings, out: the side's
run directory) starts the project's fork server (`executors.forkserver`: a new
interpreter of the side's Python and `PYTHONPATH` that imports torch and the
side's sweep code once, never touches CUDA, and forks a child per call), then
waits for `round R` on stdin. Each round runs in a fresh child forked from it
(`start_round`), which plans the suite, runs round R once in that round's seeded
order (`rounds.round_order`, the same on both sides) into `out/rounds/RRR`, and
exits. A process that lives for the whole job would share whatever it drew at
start (allocator state, memory layout, thread placement) with every round, and
pairing rounds cannot see a difference that is constant within a process; a
process per round makes that part of the round-to-round noise the gate measures
(pyperf's many short workers). Forked children share the server's address-space
layout from the import; their allocations, threads and caches are their own.

Inside a round the driver gives the two sides turns case by case: before each
case the round's process announces it and waits for `go`. The child talks to
this server over a pipe, and the server relays between the pipe and its own
stdin/stdout. Protocol (JSON lines on the original stdout; all other output goes
to stderr, the side's log): {"server": PROTOCOL}; per round {"started": R,
"setup_s": s, "pid": p} once planned, then per case {"ready": case_id, "step": i,
"total": n} -> reads `go` -> {"done": case_id, "status": ...}; {"finished": rows}
or {"error": line}; then the server's {"round_end": R, "code": exit code}. SIGINT
is ignored: the driver decides when to stop, between rounds.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

PROTOCOL = 2  # 2: a fresh process per round; the driver checks it before using this worker


def _send(proto: IO[str], message: dict[str, Any]) -> None:
    proto.write(json.dumps(message) + "\n")
    proto.flush()


def run_round(args: dict[str, Any], round_index: int, channel: multiprocessing.connection.Connection,
              started: float) -> int:
    """Round `round_index` of the side's suite, in this (fresh) process: 0 all ok, 1 some case failed,
    2 it could not run (its reason sent as one `error` line), 3 the driver went away. `started`:
    when the server began starting this process (perf_counter is the system's monotonic clock,
    the same in parent and child)."""
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
        channel.send({"error": str(exc)})
        return 2
    channel.send({"started": round_index, "setup_s": time.perf_counter() - started, "pid": os.getpid()})

    def on_start(case: Any, step: int, total: int) -> None:
        channel.send({"ready": case.case_id, "step": step, "total": total})
        if channel.recv() != "go":
            raise SystemExit(3)  # the driver went away: stop without writing half a run

    def on_end(result: Any) -> None:
        channel.send({"done": result.row["case_id"], "status": result.status})

    try:
        outcome = run_sweep(plan, resume=False, probe=False, on_start=on_start, on_end=on_end)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 3
    except MlabenchError as exc:
        channel.send({"error": str(exc)})
        return 2
    channel.send({"finished": len(outcome.results)})
    return 1 if outcome.failed else 0


def _relay(here: multiprocessing.connection.Connection, proto: IO[str]) -> None:
    """Pass the round's messages to the driver and the driver's `go` back, until the round ends."""
    while True:
        try:
            message = here.recv()
        except (EOFError, OSError):
            return
        _send(proto, message)
        if "ready" in message:
            here.send(sys.stdin.readline().strip())  # `go`, or "" once the driver is gone


def start_round(args: dict[str, Any], round_index: int, proto: IO[str]) -> int:
    """Run one round in a fresh process forked from the warm server; returns its exit code. A
    round that dies without a word (a native crash, the OOM killer) is reported in its words."""
    from mlabench.executors.forkserver import run_isolated

    here, there = multiprocessing.Pipe(duplex=True)
    relay = threading.Thread(target=_relay, args=(here, proto), daemon=True)
    relay.start()
    # By module name, not __main__'s copy of this function, so that the child can unpickle it.
    fn = importlib.import_module("mlabench.ab_worker").run_round
    outcome = run_isolated(fn, args, round_index, there, time.perf_counter())
    there.close()  # the child's copy is gone with it: the relay reads to the end, then stops
    relay.join()
    if outcome.ok and isinstance(outcome.value, int):
        return outcome.value
    _send(proto, {"error": f"the round's process {outcome.error}" + (f": {outcome.output}" if outcome.output
                                                                      else "")})
    return 70


def main(argv: list[str]) -> int:
    args: dict[str, Any] = json.loads(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole process group
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library, torch and the fork server's output must not corrupt the protocol
    from mlabench.executors.forkserver import warm

    warm(["mlabench.sweep"])  # torch and the sweep imported once, for every round's process
    _send(proto, {"server": PROTOCOL})
    while True:
        command = sys.stdin.readline().split()
        if len(command) != 2 or command[0] != "round":
            return 0  # end of input or `quit`
        code = start_round(args, int(command[1]), proto)
        _send(proto, {"round_end": int(command[1]), "code": code})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
