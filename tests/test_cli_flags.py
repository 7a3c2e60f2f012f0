"""One name per flag across commands, and flags that cannot be misspelt silently.

The same concept has the same flag in every command (`--model`, `--kv-dtype`, `--tp`,
`--cache-layout`, `-o/--out`); help shows words, not Python types; a field, option or flag
that does not exist is one `mlabench: error:` line with exit 2, naming what was meant.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import typer.main
from cli_run import run_cli

from mlabench.cli.app import app


def flags_of(command: str) -> set[str]:
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {opt for p in params if not p.hidden for opt in (*p.opts, *p.secondary_opts)}


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (code, out, err)
    assert err.count("\n") == 1 and err.startswith("mlabench: error: "), err
    return err


# --- bad names: each exited 0 (or raised a TypeError) before ---------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--set", "bogus=1"], "--set bogus: unknown field"),
    (["run", "--set", "kv_dtyp=fp8_e4m3"], "did you mean kv_dtype?"),
    (["run", "--set", "kv_dtype=fp8_e4m3", "--kv-dtype", "auto"], "give it once"),
    (["run", "--backend", "eager", "--option", "num_splits=4"], "--option num_splits: backend eager does not take"),
    (["run", "--backend", "sdpa", "--variant", "gqa", "--compile-mode", "max-autotune"], "backend sdpa does not"),
    (["sweep", "--set", "kv_dtyp=fp8_e4m3", "--dry-run"], "did you mean kv_dtype?"),
    (["kv", "--set", "name=llama-3-8b"], "give --model NAME"),
    (["kv", "--set", "bogus=1"], "--set bogus: unknown field"),
    (["run", "--preset", "tiny"], "this command spells it --model"),
    (["sweep", "--preset", "tiny", "--dry-run"], "this command spells it --model"),
    (["sweep", "--kv_dtype", "fp8_e4m3", "--dry-run"], "this command spells it --kv-dtype"),
    (["kv", "--cache-layout", "paged:100"], "--cache-layout: page size 100"),
    (["kv", "--tp", "3", "--model", "gla-xl"], "--tp: tensor-parallel degree 3"),
])
def test_a_name_that_does_not_exist_is_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = one_error_line(*run_cli([*args, "--device", "cpu"] if args[0] == "run" else args, capsys))
    assert needle in err, err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_kv_set_takes_the_dtypes_as_its_flags_do(capsys: pytest.CaptureFixture[str]) -> None:
    def planned(*args: str) -> dict:
        code, out, err = run_cli(["kv", "--model", "deepseek-v3", "--variant", "mla-absorbed", *args, "--json"],
                                 capsys)
        assert code == 0, err
        return json.loads(out)

    by_flag, by_set = planned("--kv-dtype", "fp8_e4m3"), planned("--set", "kv_dtype=fp8_e4m3")
    assert by_set == by_flag and by_set["variants"][0]["bytes_per_token_per_layer"] == 656
    half = planned("--set", "dtype=float16")
    assert half["dtype"] == "float16" and half["variants"][0]["bytes_per_token_per_layer"] == 1152
    assert planned("--preset", "deepseek-v3") == planned()  # the old spelling, hidden, still works


# --- one name per concept --------------------------------------------------------------------

def test_every_axis_flag_of_sweep_is_a_flag_of_run_and_kv_shares_the_names() -> None:
    from mlabench.cli.sweep_cmd import SweepAxes

    sweep, run, kv = flags_of("sweep"), flags_of("run"), flags_of("kv")
    axes = {f"--{name.replace('_', '-')}" for name in vars(SweepAxes()) if name != "assignments"} | {"--set"}
    assert axes <= sweep and axes <= run, axes - run
    assert {"--kv-dtype", "--tp", "--cache-layout", "--model", "--seq-len", "--batch", "--variant"} <= kv & sweep
    assert "--preset" not in kv | sweep | run  # hidden alias only
    for command in ("sweep", "run", "report", "ab", "merge"):  # -o is --out wherever it exists
        params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
        (out,) = [p for p in params if "--out" in p.opts]
        assert "-o" in out.opts, command
    assert "--markdown" in flags_of("compare") and "--markdown" in flags_of("ab")  # the format has its own flag


def test_help_shows_words_not_python_types(capsys: pytest.CaptureFixture[str]) -> None:
    python_type = re.compile(r"<(str|int|float|bool|path|list\[)", re.IGNORECASE)
    for command in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and not python_type.search(out), (command, python_type.findall(out))
    code, out, _ = run_cli(["sweep", "--help"], capsys)
    assert "--kv-dtype LIST" in out and "--budget SECONDS" in out and "--set FIELD=VALUE" in out


def test_the_sweep_and_kv_commands_stay_thin() -> None:
    from mlabench.cli.kv_cmd import kv
    from mlabench.cli.sweep_cmd import sweep

    assert len(inspect.getsourcelines(inspect.unwrap(sweep))[0]) <= 80
    assert len(inspect.getsourcelines(inspect.unwrap(kv))[0]) <= 40


def test_every_executor_has_what_the_driver_calls() -> None:
    """The sweep driver calls these on any executor, so none may be reached through getattr."""
    from mlabench.executors.local import IsolateExecutor, LocalExecutor
    from mlabench.executors.protocol import Executor
    from mlabench.executors.ray_exec import RayExecutor

    needed = {"name", "device_meta", "resolve_device", "describe", "peaks", "run", "close"}
    assert needed <= set(Executor.__annotations__) | {n for n in vars(Executor) if not n.startswith("_")}
    for cls in (LocalExecutor, IsolateExecutor, RayExecutor):
        missing = {n for n in needed - {"device_meta"} if not callable(getattr(cls, n, None)) and n != "name"}
        assert not missing and isinstance(cls.name, str), (cls.__name__, missing)
    local = LocalExecutor()
    assert (local.device_meta, local.peaks(["float32"], False), local.close()) == (None, None, None)
    assert str(local.resolve_device("cpu")) == "cpu"
