"""Running the CLI in-process from tests: the exit code and what it printed."""

from __future__ import annotations

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
