"""Same-job A/B: measure a baseline and a candidate alternately, round by round, on one machine.

A baseline recorded in another job carries that job's noise (another host state,
clocks, a neighbour), which no number of samples averages out. Measuring both
sides in one job, interleaved, leaves both exposed to the same drift: round k of
the baseline and round k of the candidate run side by side, the side that goes
first alternates, and `compare` pairs them.

Each side is one of:
- a git ref (`main`, `HEAD~1`, a commit): checked out into a temporary
  `git worktree`; its code runs with this interpreter and `PYTHONPATH` pointing
  at that tree, so nothing is reinstalled (its dependencies must match);
- a source tree (a directory holding `mlabench/`): the same, without git;
- a Python interpreter (a file, e.g. `venv-a/bin/python`): an environment with
  mlabench installed.

Every round of every side runs in a fresh process, so what a process draws at
start (allocator state, memory layout, thread placement) varies from round to
round and is part of the noise the paired test sees. When both sides have the
per-round worker (`ab_worker.PROTOCOL` 2), each side is one server that imported
torch once and starts a process per round (`ab_driver`), and the two sides' round
processes take turns case by case. Otherwise (an older baseline) every round of
a side is one `python -m mlabench sweep` process, the sides taking turns round by
round; only flags every mlabench sweep has are used, so the older code still
runs. Either way `rounds.assemble_rounds` joins each side's rounds into one run
directory whose samples carry their round. Imports no torch.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlabench.ab_driver import RoundEvent, run_fresh_rounds, side_error
from mlabench.ab_sides import Side, Workspace, check_side, resolve_side, suite_for
from mlabench.errors import UsageError
from mlabench.rounds import assemble_rounds
from mlabench.settings import SweepSettings

__all__ = ["AbResult", "RoundEvent", "Side", "Workspace", "check_side", "resolve_side", "run_ab", "suite_for"]


def _sweep(side: Side, suite: str, out: Path, extra: Sequence[str], accuracy: bool, round_index: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["sweep", "--suite", suite, "--out", str(out), "--no-report", "--no-probe", *extra]
    if not accuracy:
        args.append("--no-accuracy")
    log = out.parent / f"{out.name}.log"
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(side.command(*args), env=side.env(), cwd=side.cwd, stdout=fh, stderr=subprocess.STDOUT,
                              check=False)
    if proc.returncode not in (0, 1):  # 1: some case failed, which compare judges; more: the sweep did not run
        raise side_error(side, round_index, proc.returncode, log)


def _settings_flags(settings: dict[str, object]) -> list[str]:
    """The sweep flags that set `settings` (a boolean is its --X/--no-X switch)."""
    out: list[str] = []
    for key, value in settings.items():
        flag = SweepSettings.flag(key)
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def _sweep_rounds(sides: tuple[Side, Side], suite: str, rounds: int, out: Path, device: str,
                  settings: dict[str, object], on_round: Callable[[RoundEvent], None] | None,
                  should_stop: Callable[[], bool]) -> dict[str, list[Path]]:
    """Older code: every round of a side is one whole `mlabench sweep` process, the sides in turn."""
    done: dict[str, list[Path]] = {s.name: [] for s in sides}
    extra = ["--device", device, *_settings_flags(settings)]
    for r in range(rounds):
        if r and should_stop():
            break
        order = sides if r % 2 == 0 else sides[::-1]  # neither side always goes first
        for side in order:
            target = out / side.name / "rounds" / f"{r:03d}"
            if target.exists():
                shutil.rmtree(target)
            started = time.perf_counter()
            _sweep(side, suite, target, extra, accuracy=r == 0, round_index=r)
            done[side.name].append(target)
            if on_round:
                on_round(RoundEvent(r, rounds, side.name, time.perf_counter() - started))
    return done


@dataclass(frozen=True)
class AbResult:
    """The two assembled run directories, the rounds both sides finished, and the time processes took to start."""

    baseline: Path
    candidate: Path
    rounds: int
    wall_s: float
    startup_s: float | None = None  # None: not measured (older code, whole sweeps)


def run_ab(sides: tuple[Side, Side], suite: str, rounds: int, out: Path, device: str = "auto",
           settings: dict[str, object] | None = None, on_round: Callable[[RoundEvent], None] | None = None,
           should_stop: Callable[[], bool] = lambda: False, per_case: bool | None = None) -> AbResult:
    """Run up to `rounds` rounds of both sides alternately, each round in fresh processes; stops
    between rounds when `should_stop()`. Returns the assembled run directories.

    `per_case` (default: when both sides have the per-round worker): the sides' round processes
    take turns case by case; otherwise whole sweeps in turn. The accuracy check runs in the
    first round only: it is deterministic and costs more than the timing.
    """
    if rounds < 3:
        raise UsageError(f"--rounds must be at least 3 (a timing verdict needs 3+ on each side), got {rounds}")
    job = uuid.uuid4().hex[:12]
    out = out.resolve()  # the sweeps start in the side's own directory
    settings = dict(settings or {})
    started = time.perf_counter()
    startup: float | None = None
    if per_case is None:
        per_case = all(check_side(s)[1] >= 2 for s in sides)
    pids: dict[str, list[int]] = {}
    if per_case:
        fresh = run_fresh_rounds(sides, suite, rounds, out, device, settings, on_round, should_stop)
        done, startup, pids = fresh.dirs, fresh.startup_s, fresh.pids
    else:
        done = _sweep_rounds(sides, suite, rounds, out, device, settings, on_round, should_stop)
    finished = min(len(v) for v in done.values())
    dirs = []
    for side in sides:
        run_dir = out / side.name
        if finished:
            assemble_rounds(done[side.name][:finished], run_dir, {"ab": {
                "job": job, "side": side.name, "source": side.describe, "rounds": finished,
                "interleave": "case" if per_case else "round", "process": "fresh per round",
                "round_pids": pids.get(side.name, [])[:finished]}})
        dirs.append(run_dir)
    return AbResult(dirs[0], dirs[1], finished, time.perf_counter() - started, startup)


