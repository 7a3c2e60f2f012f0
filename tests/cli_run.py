"""Running the CLI in-process from tests: the exit code and what it printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlabench.cli.app import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlabench ARGS`."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, expected: int = 2) -> None:
    """Bad input's contract: exit `expected`, one `mlabench: error:` line on stderr, no traceback."""
    assert code == expected, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlabench: error: "), err


# Runs each argument list through the CLI in one child process and prints [exit code, stderr] per
# list: a time limit on the child turns a hang into a failed test instead of a stalled run.
_CHILD = """
import contextlib, io, json, sys
from mlabench.cli.app import main
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


def answers_in_child(batch: list[list[str]], cwd: Path, timeout: float = 300) -> list[tuple[int, str]]:
    """(exit code, stderr) of `mlabench ARGS` for each ARGS in `batch`, all in one child process."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(batch)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "MLABENCH_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr  # a hang times out, an abort or segfault ends the child
    return [tuple(json.loads(line)) for line in proc.stdout.splitlines()]
