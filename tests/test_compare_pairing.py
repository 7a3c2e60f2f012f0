"""When the gate pairs rounds, and what the `change` column holds.

Pairing: round k of the baseline and round k of the candidate ran back to back only
inside one `mlabench ab` job; two runs recorded apart (two `sweep --rounds`) have
nothing in common at round k, and pairing them would cancel noise that is not
shared. The p-values are checked against scipy's own t-tests (one case per run:
no empirical-Bayes prior, so the moderated t is the plain one), and the planted data
make the two tests disagree, so testing the wrong way changes the verdict too.

`change`: the ratio of the two medians printed in the same row, minus one, and its
interval an interval of that ratio, on every row of comparisons of each kind.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import run_cli
from scipy import stats
from synthetic_runs import build_rows, make_meta, make_rounds_run, make_run, write_run

ONE_CASE: dict[str, Any] = dict(variants=("gqa",), backends=("eager",), modes=("decode",), seq_lens=(512,),
                                batches=(8,), claims=False, failures=False)
SLOWDOWN = 1.2


def drifting_run(path: Path, *, rounds: int, factor: float, drift: np.ndarray, seed: int,
                 ab_job: str | None) -> Path:
    """One case whose round r runs at `drift[r]` (the same drift on both sides) times `factor`."""
    rows, _ = build_rows(seed=0, **ONE_CASE)
    rng = np.random.default_rng(seed)
    samples = []
    for row in rows:
        for r in range(rounds):
            level = float(row["latency_ms"]) * factor * drift[r]
            for i, x in enumerate(level * np.exp(rng.normal(0.0, 0.002, size=15))):
                samples.append({"case_id": row["case_id"], "sample": i, "latency_ms": float(x), "round": r})
    meta = make_meta()
    meta["rounds"] = rounds
    if ab_job:
        meta["ab"] = {"job": ab_job, "rounds": rounds}
    return write_run(path, rows, samples, meta)


def log_round_medians(run: Path) -> np.ndarray:
    import pandas as pd

    frame = pd.read_csv(run / "samples.csv")
    return np.log(frame.groupby("round")["latency_ms"].median().to_numpy())


def compare_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run_cli(["compare", *args, "--json"], capsys)
    return code, json.loads(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("jobs", [("j1", "j1"), (None, None), ("j1", "j2"), ("j1", None)])
def test_rounds_are_paired_only_within_one_ab_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  seed: int, jobs: tuple[str | None, str | None]) -> None:
    """Large drift shared round by round: paired, a 1.2x slowdown stands out; unpaired, it drowns."""
    rounds = 6
    drift = np.exp(np.random.default_rng(seed).normal(0.0, 0.4, size=rounds))
    base = drifting_run(tmp_path / "base", rounds=rounds, factor=1.0, drift=drift, seed=seed, ab_job=jobs[0])
    cand = drifting_run(tmp_path / "cand", rounds=rounds, factor=SLOWDOWN, drift=drift, seed=seed + 50,
                        ab_job=jobs[1])
    code, doc = compare_json(capsys, str(base), str(cand))
    (case,) = [c for c in doc["cases"] if c["method"]]
    lb, lc = log_round_medians(base), log_round_medians(cand)
    same_job = jobs[0] is not None and jobs[0] == jobs[1]
    assert doc["paired"] is same_job
    # Holm over one case's two one-sided tests: twice the smaller p.
    expected = (stats.ttest_rel(lc, lb, alternative="greater") if same_job
                else stats.ttest_ind(lc, lb, alternative="greater", equal_var=True)).pvalue
    assert case["p_value"] == pytest.approx(min(1.0, 2 * expected), rel=1e-6)
    if same_job:
        assert case["verdict"] == "regressed" and code == 1
    else:
        assert case["verdict"] != "regressed" and code == 0, doc["summary"]


def test_same_job_with_unequal_rounds_is_not_paired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drift = np.exp(np.random.default_rng(7).normal(0.0, 0.4, size=6))
    base = drifting_run(tmp_path / "base", rounds=6, factor=1.0, drift=drift, seed=1, ab_job="j1")
    cand = drifting_run(tmp_path / "cand", rounds=5, factor=SLOWDOWN, drift=drift, seed=2, ab_job="j1")
    _, doc = compare_json(capsys, str(base), str(cand))
    (case,) = [c for c in doc["cases"] if c["method"]]
    expected = stats.ttest_ind(log_round_medians(cand), log_round_medians(base), alternative="greater").pvalue
    assert not doc["paired"] and case["p_value"] == pytest.approx(min(1.0, 2 * expected), rel=1e-6)


def _comparisons(root: Path) -> list[list[str]]:
    slow = lambda key: key["variant"] in ("gqa", "mqa")  # noqa: E731
    grid: dict[str, Any] = dict(seq_lens=(512, 4096), ranks=(256,), claims=False)
    runs = {
        "ab_base": make_rounds_run(root / "ab_base", rounds=7, seed=0, round_noise=0.05, ab_job="j", **grid),
        "ab_slow": make_rounds_run(root / "ab_slow", rounds=7, seed=1, slowdown=1.3, slow=slow, round_noise=0.05,
                                   ab_job="j", **grid),
        "r_base": make_rounds_run(root / "r_base", rounds=4, seed=2, round_noise=0.05, **grid),
        "r_slow": make_rounds_run(root / "r_slow", rounds=5, seed=3, slowdown=0.8, slow=slow, round_noise=0.05,
                                  **grid),
        "plain": make_run(root / "plain", seed=4, **grid),
        "plain_slow": make_run(root / "plain_slow", seed=5, slowdown=1.4, slow=slow, **grid),
    }
    rows, _ = build_rows(seed=6, slowdown=1.2, slow=slow, **grid)
    nosamples = write_run(root / "nosamples", rows, None, make_meta())
    s = {k: str(v) for k, v in runs.items()}
    return [[s["ab_base"], s["ab_slow"]], [s["r_base"], s["r_slow"]], [s["plain"], s["plain_slow"]],
            [s["plain"], s["plain_slow"], "--sample-test"], [s["plain"], str(nosamples)],
            [s["r_base"], s["plain_slow"]]]


def test_change_is_the_ratio_of_the_printed_medians_on_every_row(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    checked = 0
    for args in _comparisons(tmp_path):
        _, doc = compare_json(capsys, *args)
        for c in doc["cases"]:
            if c["base_ms"] is None or c["cand_ms"] is None:
                assert c["ratio"] is None or c["method"] is None, c
                continue
            assert c["ratio"] == pytest.approx(c["cand_ms"] / c["base_ms"], rel=1e-12), (args, c)
            if c["ci_low"] is not None:
                assert c["ci_low"] <= c["ratio"] <= c["ci_high"], (args, c)
            checked += 1
        # The same in what a reviewer reads: the markdown row's change from its printed medians.
        _, md, _ = run_cli(["compare", *args, "--format", "markdown"], capsys)
        for line in md.splitlines():
            cells = [x.strip() for x in line.strip("|").split("|")]
            if len(cells) < 6 or not re.fullmatch(r"[+-]\d+\.\d%", cells[5]):
                continue
            base_ms, cand_ms = float(cells[3]), float(cells[4])
            printed = float(cells[5].rstrip("%"))
            # Medians are printed to 4 significant digits, the change to 0.1 points.
            slack = 0.05 + 100 * (cand_ms / base_ms) * 1e-3
            assert math.isclose(printed, 100 * (cand_ms / base_ms - 1), abs_tol=slack), line
            checked += 1
    assert checked > 100
