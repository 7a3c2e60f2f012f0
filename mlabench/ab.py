"""Same-job A/B: measure a baseline and a candidate alternately, round by round, on one machine.

A baseline recorded in another job carries that job's noise (another host state,
clocks, a neighbour), which no number of samples averages out. Measuring both
sides in one job, interleaved, leaves both exposed to the same drift: round k of
the baseline and round k of the candidate run back to back, the side that goes
first alternates, and `compare` pairs them.

Each side is one of:
- a git ref (`main`, `HEAD~1`, a commit): checked out into a temporary
  `git worktree`; its code runs with this interpreter and `PYTHONPATH` pointing
  at that tree, so nothing is reinstalled (its dependencies must match);
- a source tree (a directory holding `mlabench/`): the same, without git;
- a Python interpreter (a file, e.g. `venv-a/bin/python`): an environment with
  mlabench installed.

When both sides have `mlabench.ab_worker`, each side is one multi-round sweep
process and the two take turns case by case (`ab_worker`): the same case is
measured on both sides seconds apart, in the same seeded order, so load that
comes and goes on a shared machine hits both alike. Otherwise (an older
baseline) every round of a side is one `python -m mlabench sweep` process, the
sides taking turns round by round, and `rounds.assemble_rounds` joins each side's
rounds into one run directory whose samples carry their round; only flags every
mlabench sweep has are used, so the older code still runs.
Imports no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlabench.errors import UsageError
from mlabench.rounds import assemble_rounds
from mlabench.settings import SweepSettings

SIDES = ("baseline", "candidate")
LOG_TAIL = 12  # lines of a failed sweep's output quoted in the error


@dataclass(frozen=True)
class Side:
    """How to run one side's mlabench."""

    name: str  # baseline | candidate
    spec: str  # what was given on the command line
    python: str
    tree: Path | None = None  # source tree put first on PYTHONPATH; None: the interpreter's own install
    describe: str = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.tree is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                      else []))
        return env

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "mlabench", *args]

    @property
    def cwd(self) -> str:
        """Where its processes start: `python -m` puts the working directory first on sys.path, so it
        must be the side's own tree, or a directory without an mlabench package in it."""
        return str(self.tree) if self.tree is not None else tempfile.gettempdir()


@dataclass
class Workspace:
    """Temporary git worktrees made for the run; `close` removes them."""

    repo: Path | None = None
    trees: list[Path] = field(default_factory=list)

    def close(self) -> None:
        for tree in self.trees:
            subprocess.run(["git", "-C", str(self.repo), "worktree", "remove", "--force", str(tree)],
                           capture_output=True, check=False)
            shutil.rmtree(tree.parent, ignore_errors=True)
        self.trees.clear()


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout.strip()


def resolve_side(name: str, spec: str, repo: Path | None, workspace: Workspace) -> Side:
    """An interpreter, a source tree, or a git ref checked out into a temporary worktree."""
    path = Path(spec)
    if path.is_file():
        if not os.access(path, os.X_OK):
            raise UsageError(f"{name}: {spec} is a file but not an executable Python interpreter")
        return Side(name, spec, str(path), None, f"interpreter {path}")
    if path.is_dir():
        if not (path / "mlabench" / "__init__.py").is_file():
            raise UsageError(f"{name}: {spec} is a directory without mlabench/ (expected a source tree)")
        return Side(name, spec, sys.executable, path.resolve(), f"source tree {path}")
    root = repo or Path.cwd()
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel"))
    except UsageError:
        raise UsageError(f"{name}: {spec!r} is not an interpreter, a source tree, or a git ref "
                         f"({root} is not in a git repository; pass --repo)") from None
    try:
        commit = _git(top, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    except UsageError:
        raise UsageError(f"{name}: {spec!r} is not an interpreter, a source tree, or a commit of {top}") from None
    tree = Path(tempfile.mkdtemp(prefix=f"mlabench-ab-{name}-")) / "tree"
    _git(top, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    workspace.repo = top
    workspace.trees.append(tree)
    return Side(name, spec, sys.executable, tree, f"git {spec} ({commit[:12]})")


def check_side(side: Side) -> str:
    """Import mlabench the way the sweeps will, and make sure it is the side's own code; returns its path."""
    probe = "import mlabench, sys; sys.stdout.write(mlabench.__file__)"
    proc = subprocess.run([side.python, "-c", probe], env=side.env(), cwd=side.cwd, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"{side.name}: cannot import mlabench with {side.describe}: {last}")
    where = Path(proc.stdout.strip()).resolve()
    if side.tree is not None and side.tree.resolve() not in where.parents:
        raise UsageError(f"{side.name}: {side.describe} imports mlabench from {where}, not from its tree")
    return str(where)


@dataclass(frozen=True)
class RoundEvent:
    round_index: int
    rounds: int
    side: str
    seconds: float


def _sweep(side: Side, suite: str, out: Path, extra: Sequence[str], accuracy: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["sweep", "--suite", suite, "--out", str(out), "--no-report", "--no-probe", *extra]
    if not accuracy:
        args.append("--no-accuracy")
    log = out.parent / f"{out.name}.log"
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(side.command(*args), env=side.env(), cwd=side.cwd, stdout=fh, stderr=subprocess.STDOUT,
                              check=False)
    if proc.returncode not in (0, 1):  # 1: some case failed, which compare judges; more: the sweep did not run
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-LOG_TAIL:]
        raise UsageError(f"{side.name} sweep failed (exit {proc.returncode}, log {log}): " + " | ".join(tail))


def has_lockstep(side: Side) -> bool:
    """Whether the side's mlabench has the lockstep worker (older code runs whole sweeps per round)."""
    proc = subprocess.run([side.python, "-c", "import mlabench.ab_worker"], env=side.env(), cwd=side.cwd,
                          capture_output=True, check=False)
    return proc.returncode == 0


class _Worker:
    """A lockstep worker process and its protocol channel."""

    def __init__(self, side: Side, args: dict[str, object], log: Path):
        self.side = side
        self.log = log
        self._log = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen([side.python, "-m", "mlabench.ab_worker", json.dumps(args)], env=side.env(),
                                     cwd=side.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        self.round = -1

    def message(self) -> dict[str, object] | None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                return msg
        return None  # the process ended

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        code = self.proc.wait()
        self._log.close()
        return code

    def fail(self, code: int) -> UsageError:
        tail = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-LOG_TAIL:]
        return UsageError(f"{self.side.name} worker failed (exit {code}, log {self.log}): " + " | ".join(tail))


def _run_lockstep(sides: tuple[Side, Side], suite: str, rounds: int, out: Path, device: str,
                  settings: dict[str, object], on_round: Callable[[RoundEvent], None] | None,
                  should_stop: Callable[[], bool]) -> None:
    """Both sides as multi-round sweeps, given turns case by case; each writes its own run directory."""
    workers = []
    for side in sides:
        (out / side.name).mkdir(parents=True, exist_ok=True)
        args = {"suite": suite, "out": str(out / side.name), "device": device,
                "settings": {**settings, "rounds": rounds}}
        workers.append(_Worker(side, args, out / f"{side.name}.log"))
    started = {w.side.name: time.perf_counter() for w in workers}
    active = list(workers)
    turn = 0
    try:
        while active:
            if should_stop():
                raise KeyboardInterrupt
            # Which side measures first alternates, so neither always gets the warmer (or colder) slot.
            for w in (active if turn % 2 == 0 else active[::-1]):
                msg = w.message()
                if msg is None or "finished" in msg:
                    active.remove(w)
                    continue
                step, total = int(msg.get("step", 0)), max(1, int(msg.get("total", 1)))
                current = min(rounds - 1, step * rounds // total)
                if current != w.round:
                    if w.round >= 0 and on_round:
                        on_round(RoundEvent(w.round, rounds, w.side.name, time.perf_counter() - started[w.side.name]))
                    w.round, started[w.side.name] = current, time.perf_counter()
                w.go()
                done = w.message()
                if done is None:
                    active.remove(w)
            turn += 1
    finally:
        codes = [(w, w.close()) for w in workers]
    for w, code in codes:
        if code not in (0, 1):
            raise w.fail(code)
    if on_round:
        for w in workers:
            on_round(RoundEvent(rounds - 1, rounds, w.side.name, time.perf_counter() - started[w.side.name]))


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


def run_ab(sides: tuple[Side, Side], suite: str, rounds: int, out: Path, device: str = "auto",
           settings: dict[str, object] | None = None, on_round: Callable[[RoundEvent], None] | None = None,
           should_stop: Callable[[], bool] = lambda: False, lockstep: bool | None = None) -> tuple[Path, Path]:
    """Run `rounds` rounds of both sides alternately; returns the baseline and candidate run directories.

    Lockstep (both sides have `mlabench.ab_worker`): the two sides take turns case
    by case. Otherwise each round of a side is one whole sweep process, the sides
    taking turns round by round. Either way the accuracy check runs in the first
    round only: it is deterministic and costs more than the timing.
    """
    if rounds < 2:
        raise UsageError(f"--rounds must be at least 2 (the test needs replicates of both sides), got {rounds}")
    job = uuid.uuid4().hex[:12]
    out = out.resolve()  # the sweeps start in the side's own directory
    settings = dict(settings or {})
    if lockstep is None:
        lockstep = all(has_lockstep(s) for s in sides)
    if lockstep:
        _run_lockstep(sides, suite, rounds, out, device, settings, on_round, should_stop)
        for side in sides:
            meta_path = out / side.name / "meta.json"
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta.update(rounds=rounds, ab={"job": job, "side": side.name, "source": side.describe, "rounds": rounds,
                                           "interleave": "case"})
            meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        return out / sides[0].name, out / sides[1].name
    done: dict[str, list[Path]] = {s.name: [] for s in sides}
    extra = ["--device", device, *_settings_flags(settings)]
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]  # neither side always goes first
        for side in order:
            target = out / side.name / "rounds" / f"{r:03d}"
            if target.exists():
                shutil.rmtree(target)
            started = time.perf_counter()
            _sweep(side, suite, target, extra, accuracy=r == 0)
            done[side.name].append(target)
            if on_round:
                on_round(RoundEvent(r, rounds, side.name, time.perf_counter() - started))
        if should_stop():
            break
    dirs = []
    for side in sides:
        run_dir = out / side.name
        assemble_rounds(done[side.name], run_dir, {"ab": {"job": job, "side": side.name, "source": side.describe,
                                                          "rounds": len(done[side.name]), "interleave": "round"}})
        dirs.append(run_dir)
    return dirs[0], dirs[1]


def suite_for(suite: str, candidate: Side) -> str:
    """A suite file both sides run: a path as given; a name from the candidate's tree, else this install's."""
    if Path(suite).suffix == ".toml" or Path(suite).is_file():
        return str(Path(suite).resolve())
    if candidate.tree is not None:
        for folder in ("suites", "mlabench/suite_data"):
            path = candidate.tree / folder / f"{suite}.toml"
            if path.is_file():
                return str(path)
    from mlabench.suites import resolve_suite

    return str(resolve_suite(suite))
