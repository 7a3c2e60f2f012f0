"""Inputs that used to hang, crash or blame the wrong thing: each is now one `mlabench: error:` line
and exit 2, at once. Grid sizing, ragged bounds, suite tables, Slurm variables, an unreachable Ray
cluster, and the dry run's rounds."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cli_run import answers_in_child, assert_one_error_line, run_cli
from suite_text import two_decode_cases

from mlabench.errors import UsageError
from mlabench.executors.slurm import slurm_shard

SUITE = two_decode_cases("rel")


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    p = tmp_path / "rel.toml"
    p.write_text(SUITE)
    return p


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def test_inputs_that_hung_answer_at_once(suite: Path, tmp_path: Path) -> None:
    """In one child process with a time limit, so a regression fails here instead of stalling the run."""
    many = ",".join(str(i) for i in range(1, 10_001))
    dangerous = [  # (args, needle)
        (["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu", "--batch", many, "--q-len", many],
         "200,000,000 grid points"),
        (["sweep", "--suite", str(suite), "--device", "cpu", "--executor", "ray", "--ray-address",
          f"127.0.0.1:{closed_port()}", "--out", str(tmp_path / "r1")], "no Ray cluster answers"),
        (["sweep", "--suite", str(suite), "--device", "cpu", "--executor", "ray", "--ray-address",
          "no-such-host.invalid:6379", "--out", str(tmp_path / "r2")], "no Ray cluster answers"),
    ]
    answers = answers_in_child([a for a, _ in dangerous], tmp_path)
    assert len(answers) == len(dangerous)
    for (code, err), (_, needle) in zip(answers, dangerous, strict=True):
        assert_one_error_line(code, err, 2)
        assert needle in err
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_grid_size_counts_every_grid_before_expanding_any(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = ", ".join(str(i) for i in range(1, 251))
    grid = f'[[grid]]\nmodel = "tiny"\nvariant = "mha"\nbatch = [{values}]\nq_len = [{values}]\n'
    path = tmp_path / "two.toml"
    path.write_text('name = "two"\n' + grid + grid.replace('"mha"', '"gqa"'))  # 62,500 points each
    code, _, err = run_cli(["sweep", "--suite", str(path), "--dry-run", "--device", "cpu"], capsys)
    assert_one_error_line(code, err)
    assert "[[grid]] #2 of two has 62,500 grid points (250 batch x 250 q_len), 125,000 with the grids" in err


@pytest.mark.parametrize(("value", "needle"), [
    ("uniform:1-99999999999999999999999", "HIGH <= 16777216"),
    ("list:16/99999999999999999999999", ">= 1 and <= 16777216"),
    ("uniform:0-16", "1 <= LOW"),
])
def test_ragged_lengths_are_bounded(suite: Path, value: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu", "--seq-len", value],
                           capsys)
    assert_one_error_line(code, err)
    assert needle in err and value in err


def test_a_ragged_batch_is_bounded(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu", "--seq-len",
                            "uniform:16-32", "--batch", "100000000000"], capsys)
    assert_one_error_line(code, err)
    assert "batch 100000000000 with the ragged seq_len 'uniform:16-32'" in err


@pytest.mark.parametrize("table", ["settings", "defaults", "options", "cpu"])
def test_a_suite_table_that_is_not_a_table(tmp_path: Path, table: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'{table} = 5\n[[grid]]\nmodel = "tiny"\nvariant = "mha"\n')
    code, _, err = run_cli(["sweep", "--suite", str(path), "--dry-run", "--device", "cpu"], capsys)
    assert_one_error_line(code, err)
    assert f"[{table}] of bad.toml must be a table, got 5" in err


@pytest.mark.parametrize(("cpu", "needle"), [
    ("batch = [-1]", "batch must be positive integers, got -1 in [cpu] of cpuwrong"),
    ('variant = ["nope"]', "variant 'nope' in [cpu] of cpuwrong is unknown"),
])
def test_a_bad_cpu_value_is_blamed_on_the_cpu_table(tmp_path: Path, cpu: str, needle: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cpuwrong.toml"
    path.write_text(f'[[grid]]\nmodel = "tiny"\nvariant = "mha"\n[[grid]]\nmodel = "tiny"\nvariant = "gqa"\n'
                    f"[cpu]\n{cpu}\n")
    code, _, err = run_cli(["sweep", "--suite", str(path), "--dry-run", "--device", "cpu"], capsys)
    assert_one_error_line(code, err)
    assert needle in err and "[[grid]]" not in err


def test_a_bad_slurm_variable_is_the_one_named() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_STEP": "two"}
    with pytest.raises(UsageError) as info:
        slurm_shard(env)
    assert str(info.value) == "--shard auto: SLURM_ARRAY_TASK_STEP='two' is not an integer"
    with pytest.raises(UsageError, match=r"^--shard auto: SLURM_ARRAY_TASK_MIN='x' is not an integer$"):
        slurm_shard({**env, "SLURM_ARRAY_TASK_MIN": "x", "SLURM_ARRAY_TASK_STEP": "1"})


def test_dry_run_counts_every_round(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    estimates = {}
    for rounds in (1, 2, 3, 1000):
        code, out, err = run_cli(["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu", "--json",
                                  "--rounds", str(rounds)], capsys)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["rounds"] == rounds
        estimates[rounds] = doc["estimated_s"]
    per_round = estimates[2] - estimates[1]  # setup, warm-up and sampling again; compile and accuracy once
    assert per_round > 0
    assert estimates[3] - estimates[2] == pytest.approx(per_round, abs=0.2)
    assert estimates[1000] - estimates[1] == pytest.approx(999 * per_round, rel=0.01)
    code, out, _ = run_cli(["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu", "--rounds", "3"], capsys)
    assert code == 0 and "2 cases x 3 rounds" in out
