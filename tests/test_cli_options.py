"""Options shared across commands: `--option NAME=VALUE`, and `run` as a one-case `sweep`.

`run` plans and measures through the same library path as `sweep`, so the same case
gets the same key, case id, settings and backend options from either command.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_run import run_cli

from mlabench import schema
from mlabench.cli.common import parse_options
from mlabench.errors import UsageError

FAST = ["--budget", "0.005", "--warmup", "0.001", "--min-samples", "3", "--no-probe", "--device", "cpu"]
CASE = ["--model", "tiny", "--variant", "gqa", "--backend", "sdpa", "--mode", "decode", "--batch", "2",
        "--seq-len", "32", "--q-len", "1"]


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / schema.RESULTS_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


def test_option_values_are_read_like_set_values() -> None:
    got = parse_options(["num_splits=4", "rope=1e6", "flag=true", "off=False", " compile_mode = max-autotune "])
    assert got == {"num_splits": 4, "rope": 1e6, "flag": True, "off": False, "compile_mode": "max-autotune"}
    assert isinstance(got["num_splits"], int) and isinstance(got["rope"], float)
    # The dedicated flags are aliases: the same value twice is fine, two different ones are not.
    assert parse_options(["sdpa_kernel=math"], {"sdpa_kernel": "math", "compile_mode": None}) == {"sdpa_kernel": "math"}
    with pytest.raises(UsageError, match="disagree"):
        parse_options(["sdpa_kernel=flash"], {"sdpa_kernel": "math"})
    for bad in ("num_splits", "=4", "num_splits="):
        with pytest.raises(UsageError, match="expected NAME=VALUE"):
            parse_options([bad])
    with pytest.raises(UsageError, match="given twice"):
        parse_options(["num_splits=2", "num_splits=4"])


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize(("backend", "options", "needle"), [
    ("triton", ["--option", "num_splits"], "--option: expected NAME=VALUE, got 'num_splits'"),
    ("triton", ["--option", "num_split=4"], "unknown backend option 'num_split'"),
    ("triton", ["--option", "num_splits=0"], "num_splits: must be"),
    ("triton", ["--option", "block_h=24"], "block_h: must be"),
    ("compiled", ["--option", "compile_mode=ludicrous"], "compile_mode: unknown mode"),
    ("compiled", ["--compile-mode", "ludicrous"], "compile_mode: unknown mode"),
    ("sdpa", ["--option", "sdpa_kernel=flash", "--sdpa-kernel", "math"], "disagree"),
    ("triton", ["--option", "num_splits=2", "--option", "num_splits=4"], "given twice"),
])
def test_bad_option_is_one_line_and_exit_2(command: str, backend: str, options: list[str], needle: str,
                                           capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--variant", "mla-absorbed", "--backend", backend, "--mode", "decode", "--device", "cpu", *options]
    code, out, err = run_cli([command, *args, *(["--dry-run"] if command == "sweep" else [])], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mlabench: error: ") and needle in err, err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_run_writes_nothing_unless_asked(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["run", *CASE, *FAST, "--option", "sdpa_kernel=math", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["status"] == "ok" and row["options"] == "sdpa_kernel=math" and row["backend_detail"] == "sdpa:math"
    assert row["n_samples"] >= 3
    assert not any(tmp_path.iterdir())


def test_run_and_sweep_give_the_same_case_the_same_key_and_settings(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    # A suite named like run's one-case suite, with the same single grid point.
    suite = tmp_path / "run.toml"
    suite.write_text('name = "run"\n[[grid]]\nmodel = "tiny"\nvariant = "gqa"\nbackend = "sdpa"\nmode = "decode"\n'
                     'batch = 2\nseq_len = 32\nq_len = 1\n')
    flags = [*FAST, "--seed", "3", "--timeout", "60", "--option", "sdpa_kernel=math"]
    code, _, err = run_cli(["run", *CASE, *flags, "--out", str(tmp_path / "by-run")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["sweep", "--suite", str(suite), *flags, "--out", str(tmp_path / "by-sweep"),
                            "--no-report"], capsys)
    assert code == 0, err
    (by_run,), (by_sweep,) = read_rows(tmp_path / "by-run"), read_rows(tmp_path / "by-sweep")
    assert {c: by_run[c] for c in schema.KEY_COLUMNS} == {c: by_sweep[c] for c in schema.KEY_COLUMNS}
    assert by_run["case_id"] == by_sweep["case_id"] and by_run["options"] == "sdpa_kernel=math"
    meta_run, meta_sweep = (json.loads((tmp_path / d / schema.META_JSON).read_text()) for d in ("by-run", "by-sweep"))
    assert meta_run["settings"] == meta_sweep["settings"]
    assert meta_run["settings"]["seed"] == 3 and meta_run["settings"]["budget_s"] == 0.005
    assert meta_run["run"]["cases_sha1"] == meta_sweep["run"]["cases_sha1"]


def test_every_measurement_setting_is_one_declared_field_with_a_sweep_flag() -> None:
    import typer.main

    from mlabench.cli.app import app
    from mlabench.settings import SweepSettings

    sweep = typer.main.get_command(app).commands["sweep"]  # type: ignore[attr-defined]
    flags = {opt for p in sweep.params for opt in p.opts}
    for name in SweepSettings.names():
        assert SweepSettings.flag(name) in flags, name
    # Layers resolve in order, each checked once; a bad value names the flag that gave it.
    resolved = SweepSettings.resolve({"budget_s": 2.0, "rounds": 3}, {"budget_s": 0.25})
    assert (resolved.budget_s, resolved.rounds, resolved.seed) == (0.25, 3, SweepSettings().seed)
    assert resolved.as_dict()["budget_s"] == 0.25
    with pytest.raises(UsageError, match="--rounds: setting 'rounds' must be between 1 and 1000"):
        SweepSettings.check({"rounds": 0}, SweepSettings.flag("rounds"))
    with pytest.raises(UsageError, match="min_samples .20. exceeds max_samples .10."):
        SweepSettings.resolve({"min_samples": 20}, {"max_samples": 10})
