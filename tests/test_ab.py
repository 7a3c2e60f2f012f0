"""`mlabench ab`'s own behaviour: a side that cannot run, Ctrl-C and SIGTERM, what is not an interpreter.

Plumbing only, on a one-case suite with tiny budgets: no timing verdict is asserted
(real CPU timings depend on the machine's load; the gate's statistics are tested on
synthetic runs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import run_cli
from suite_text import FAST_SETTINGS

TREE = str(Path(__file__).resolve().parent.parent)
ONE_CASE = """
name = "one-case"
""" + FAST_SETTINGS + """[[grid]]
model = "tiny"
variant = ["mha"]
backend = ["eager"]
mode = ["decode"]
batch = [1]
seq_len = [32]
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "one.toml"
    path.write_text(ONE_CASE)
    return path


def test_unusable_device_stops_in_the_first_round_with_the_sides_own_line(
    suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["ab", TREE, TREE, "--suite", str(suite), "--rounds", "5", "--device", "cuda:99",
                              "--out", str(tmp_path / "ab")], capsys)
    assert code == 2 and out == ""
    errors = [x for x in err.splitlines() if x.startswith("mlabench: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "failed in round 1:" in errors[0] and "--device: cuda:99" in errors[0]
    assert "round 2/5" not in err and "round 1/5" not in err  # stopped in the first round, counting nothing
    assert not (tmp_path / "ab" / "compare.json").exists()


def test_a_program_that_is_not_python_is_named_as_such(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    true = "/bin/true" if Path("/bin/true").is_file() else "/usr/bin/true"
    code, _, err = run_cli(["ab", true, true, "--suite", str(suite)], capsys)
    assert code == 2
    assert err.count("mlabench: error:") == 1 and "not a Python interpreter with mlabench" in err
    assert "meta.json" not in err


def test_fewer_than_three_rounds_is_refused(suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["ab", TREE, TREE, "--suite", str(suite), "--rounds", "2"], capsys)
    assert code == 2 and "--rounds" in err and "3" in err


def _start(suite: Path, out: Path, rounds: int) -> tuple[subprocess.Popen[str], Path]:
    err = out.parent / "ab.err"
    env = {**os.environ, "PYTHONPATH": TREE}
    with err.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mlabench", "ab", TREE, TREE, "--suite", str(suite),
                                 "--rounds", str(rounds), "--device", "cpu", "--out", str(out), "--json"],
                                stdout=subprocess.PIPE, stderr=fh, text=True, env=env, cwd=out.parent)
    return proc, err


def _wait_for(err: Path, text: str, proc: subprocess.Popen[str], limit_s: float = 240.0) -> None:
    deadline = time.monotonic() + limit_s
    while text not in err.read_text():
        assert proc.poll() is None, err.read_text()
        assert time.monotonic() < deadline, err.read_text()
        time.sleep(0.2)


def test_ctrl_c_finishes_the_round_and_gives_the_verdict_of_the_rounds_done(suite: Path, tmp_path: Path) -> None:
    proc, err = _start(suite, tmp_path / "ab", rounds=8)
    _wait_for(err, "round 1/8 candidate", proc)
    proc.send_signal(signal.SIGINT)  # to the driver alone: a terminal would signal the group, which it ignores
    out, _ = proc.communicate(timeout=240)
    text = err.read_text()
    assert proc.returncode in (0, 1), text
    doc = json.loads(out)
    done = doc["cases"][0]["rounds_base"] if doc["cases"][0]["method"] == "rounds" else None
    assert "finishing this round" in text and "stopped by Ctrl-C after" in text
    rounds_done = int(text.split("stopped by Ctrl-C after ")[1].split()[0])
    assert 1 <= rounds_done < 8
    meta = json.loads((tmp_path / "ab" / "candidate" / "meta.json").read_text())
    assert meta["ab"]["rounds"] == rounds_done and done in (None, rounds_done)


def test_sigterm_stops_at_once_with_143_and_leaves_no_worker(suite: Path, tmp_path: Path) -> None:
    proc, err = _start(suite, tmp_path / "ab", rounds=50)
    _wait_for(err, "round 1/50 baseline", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.read_text()
    assert out == "" and "stopped by SIGTERM" in err.read_text()
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    assert str(tmp_path / "ab") not in ps  # the side servers and their round processes are gone
