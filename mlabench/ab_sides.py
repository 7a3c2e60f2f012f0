"""The two sides of `mlabench ab`: what each command-line argument names, and how to run its mlabench.

A side is a git ref (checked out into a temporary `git worktree`, run with this
interpreter and `PYTHONPATH` pointing at the tree), a source tree (a directory
holding `mlabench/`), or a Python interpreter of an environment with mlabench
installed. `check_side` imports the side's mlabench the way its processes will
and learns which worker protocol it speaks. Imports no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlabench.errors import UsageError


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


_PROBE = ("import json, sys, mlabench\n"
          "try:\n    from mlabench.ab_worker import PROTOCOL\nexcept ImportError:\n    PROTOCOL = 0\n"
          "sys.stdout.write(json.dumps({'mlabench': mlabench.__file__, 'protocol': PROTOCOL}))")


def check_side(side: Side) -> tuple[str, int]:
    """Import mlabench the way the sweeps will and make sure it is the side's own code; returns where
    it is and the side's worker protocol (0: none, 2: a fresh process per round)."""
    try:
        proc = subprocess.run([side.python, "-c", _PROBE], env=side.env(), cwd=side.cwd, capture_output=True,
                              text=True, check=False)
    except OSError as exc:
        raise UsageError(f"{side.name}: cannot run {side.python} ({exc.strerror or exc})") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"{side.name}: cannot import mlabench with {side.describe}: {last}")
    try:
        found = json.loads(proc.stdout)
        where, protocol = Path(found["mlabench"]).resolve(), int(found["protocol"])
    except (ValueError, TypeError, KeyError):
        raise UsageError(f"{side.name}: {side.spec} is not a Python interpreter with mlabench installed "
                         f"(asked to import mlabench, it answered {proc.stdout.strip()[:60]!r})") from None
    if side.tree is not None and side.tree.resolve() not in where.parents:
        raise UsageError(f"{side.name}: {side.describe} imports mlabench from {where}, not from its tree")
    return str(where), protocol


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
