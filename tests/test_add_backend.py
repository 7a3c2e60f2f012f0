"""Adding a backend is one decorated function, its options declared in the same decorator: the README's promise, tested.

A throwaway backend defined here (the eager step, with one option of its own) is registered
for this module only, then must appear in `mlabench list` with its option, accept that option
through `--option`, refuse a bad value in one line, and carry it in its cases' identity only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import assert_one_error_line, run_cli
from torch import Tensor

from mlabench.backends import BACKENDS, Prepared, StepInputs
from mlabench.backends.registry import register_backend
from mlabench.case import Case
from mlabench.errors import UsageError
from mlabench.variants import AttentionVariant

NAME = "test-echo"
FAST = ["--budget", "0.005", "--warmup", "0.001", "--min-samples", "3", "--no-probe", "--device", "cpu",
        "--model", "tiny", "--variant", "gqa", "--seq-len", "16"]


def repeats_option(case: Case) -> int:
    value = case.option("repeats", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
        raise UsageError(f"repeats: must be an integer in [1, 4], got {value!r}")
    return value


@pytest.fixture(scope="module", autouse=True)
def throwaway_backend() -> Iterator[None]:
    @register_backend(NAME, description="the eager step, run `repeats` times", options={"repeats": repeats_option})
    def prepare(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
        repeats = repeats_option(case)

        def fn() -> Tensor:
            for _ in range(repeats - 1):
                module(inputs.x, inputs.start_pos)
            return module(inputs.x, inputs.start_pos)

        return Prepared(fn=fn, detail=f"echo:x{repeats}")

    try:
        yield
    finally:
        del BACKENDS[NAME]


def test_listed_with_its_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list", "--json"], capsys)
    assert code == 0
    row = next(b for b in json.loads(out)["backends"] if b["name"] == NAME)
    assert row["options"] == ["repeats"] and row["available"] is True


def test_option_reaches_its_cases_only(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", *FAST, "--backend", NAME, "--option", "repeats=2", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["status"] == "ok" and row["options"] == "repeats=2" and row["backend_detail"] == "echo:x2"
    # A one-backend run that nothing can take the option to: bad input, not a silent no-op.
    code, out, err = run_cli(["run", *FAST, "--backend", "eager", "--option", "repeats=2", "--json"], capsys)
    assert_one_error_line(code, err)
    assert "eager does not take it" in err
    # In a sweep over both, another backend's option is not its cases' identity.
    code, out, err = run_cli(["sweep", *FAST, "--backend", f"{NAME},eager", "--option", "repeats=2", "--json",
                              "--out", str(tmp_path / "both"), "--no-report"], capsys)
    assert code == 0, err
    options = {row["backend"]: row["options"] for row in json.loads(out)["rows"]}
    assert options[NAME] == "repeats=2" and options["eager"] == ""
    code, out, err = run_cli(["run", *FAST, "--backend", NAME, "--option", "repeats=9"], capsys)
    assert code == 2 and err == "mlabench: error: repeats: must be an integer in [1, 4], got 9\n"
