"""Driving the two sides of `mlabench ab` round by round, each round of each side in a fresh process.

Each side is one `python -m mlabench.ab_worker` server (the side's own code and
interpreter) that has imported torch once; for round R the driver tells both
servers `round R`, each starts a fresh process for that round, and the two round
processes take turns case by case: the same case is measured on both sides
seconds apart, so load that comes and goes on a shared machine hits both alike.
The side that measures first alternates from case to case, starting with the
baseline in even rounds and the candidate in odd ones.

A side that fails stops the job at that round with one line quoting the side's
own error (its `mlabench: error:` line, or the last line of its log). Imports no
torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlabench.ab_sides import Side
from mlabench.errors import UsageError

CLOSE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RoundEvent:
    round_index: int
    rounds: int
    side: str
    seconds: float


@dataclass(frozen=True)
class FreshRounds:
    """Each side's round directories and round processes, and the wall time spent starting
    processes: the two servers' imports (side by side), then per round the slower side's fork
    and planning."""

    dirs: dict[str, list[Path]]
    startup_s: float
    pids: dict[str, list[int]]


def _own_error(log: Path) -> str:
    """The side's own error line: its `mlabench: error:` line, else the last line it printed."""
    try:
        lines = [x.strip() for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no output"
    prefix = "mlabench: error: "
    own = [x[len(prefix):] for x in lines if x.startswith(prefix)]
    return (own or lines or ["no output"])[-1]


def side_error(side: Side, round_index: int, code: int | None, log: Path, line: str | None = None) -> UsageError:
    """One line: which side failed in which round, and why in the side's own words."""
    how = f"exit {code}, " if code is not None else ""
    return UsageError(f"{side.name} ({side.describe}) failed in round {round_index + 1}: "
                      f"{line or _own_error(log)} ({how}log {log})")


class _Server:
    """One side's worker server and its protocol channel."""

    def __init__(self, side: Side, args: dict[str, Any], log: Path):
        self.side, self.log = side, log
        self._log = log.open("w", encoding="utf-8")
        # Its own session: a terminal's Ctrl-C is the driver's to handle (it finishes the round),
        # and closing kills the server with the round process it forked.
        self.proc = subprocess.Popen([side.python, "-m", "mlabench.ab_worker", json.dumps(args)], env=side.env(),
                                     cwd=side.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1, start_new_session=True)
        self.round = -1

    def next(self) -> dict[str, Any]:
        """The next protocol message; a server that ended is this side's failure."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                return msg
        raise side_error(self.side, max(self.round, 0), self.proc.wait(), self.log)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise side_error(self.side, max(self.round, 0), self.proc.wait(), self.log) from None

    def close(self, kill: bool) -> None:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()  # end of input: the server returns
        except BrokenPipeError:
            pass
        try:
            if kill:
                raise subprocess.TimeoutExpired(self.proc.args, 0)
            self.proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and the round process it forked
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._log.close()


def _turn(server: _Server, setup: dict[str, float], pids: dict[str, list[int]]) -> bool:
    """Let the side measure its next case; False once its round is over (it ran every case)."""
    msg = server.next()
    if "started" in msg:
        setup[server.side.name] = float(msg.get("setup_s", 0.0))
        pids[server.side.name].append(int(msg.get("pid", 0)))
        msg = server.next()
    if "ready" in msg:
        server.send("go")
        server.next()  # done
        return True
    if "finished" in msg:
        return False  # the server's round_end follows
    if "error" in msg:
        raise side_error(server.side, server.round, int(server.next().get("code", 2)), server.log, msg["error"])
    raise side_error(server.side, server.round, int(msg.get("code", -1)), server.log)  # the round process died


def run_fresh_rounds(sides: tuple[Side, Side], suite: str, rounds: int, out: Path, device: str,
                     settings: dict[str, object], on_round: Callable[[RoundEvent], None] | None,
                     should_stop: Callable[[], bool]) -> FreshRounds:
    """Up to `rounds` rounds of both sides, stopping between rounds when `should_stop()`."""
    servers = []
    kill = True
    began = time.perf_counter()
    try:
        for side in sides:
            (out / side.name).mkdir(parents=True, exist_ok=True)
            args = {"suite": suite, "out": str(out / side.name), "device": device, "settings": settings}
            servers.append(_Server(side, args, out / f"{side.name}.log"))
        for s in servers:
            s.next()  # ready: it has imported torch and the side's mlabench
        startup = time.perf_counter() - began
        done: dict[str, list[Path]] = {s.name: [] for s in sides}
        pids: dict[str, list[int]] = {s.name: [] for s in sides}
        for r in range(rounds):
            if r and should_stop():
                break
            started = time.perf_counter()
            for s in servers:
                s.round = r
                s.send(f"round {r}")
            active, setup, turn = list(servers), {}, r
            ended: dict[str, float] = {}
            while active:
                for s in list(active if turn % 2 == 0 else active[::-1]):
                    if not _turn(s, setup, pids):
                        active.remove(s)
                        ended[s.side.name] = time.perf_counter() - started
                turn += 1
            for s in servers:
                code = int(s.next().get("code", -1))  # round_end
                if code not in (0, 1):  # 1: a case failed, which compare judges
                    raise side_error(s.side, r, code, s.log)
                done[s.side.name].append(out / s.side.name / "rounds" / f"{r:03d}")
                if on_round:
                    on_round(RoundEvent(r, rounds, s.side.name, ended[s.side.name]))
            startup += max(setup.values(), default=0.0)
        kill = False
        return FreshRounds(done, startup, pids)
    finally:
        for s in servers:
            s.close(kill)
