"""Adding a variant is one class and one registration: the README's promise, tested.

A throwaway variant defined here (grouped-query attention with two KV heads whatever the
preset says) is registered for this module only, then must appear in `mlabench list`,
`mlabench kv`, a sweep (with its own analytic columns) and the HTML report, with no other
file touched.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import run_cli

from mlabench import schema
from mlabench.config import AttentionShape
from mlabench.variants import VARIANT_CLASSES, register_variant
from mlabench.variants.gqa import GroupedQueryAttention

NAME = "test-two-groups"


@pytest.fixture(scope="module", autouse=True)
def throwaway_variant() -> Iterator[None]:
    class TwoGroups(GroupedQueryAttention):
        name = NAME
        caches = "K, V for two groups"
        cache_formula = "2*2*D"

        @classmethod
        def _kv_heads(cls, shape: AttentionShape) -> int:
            return 2

    register_variant(TwoGroups)
    try:
        yield
    finally:
        del VARIANT_CLASSES[NAME]


def test_listed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list", "--json"], capsys)
    assert code == 0
    row = next(v for v in json.loads(out)["variants"] if v["name"] == NAME)
    assert row["elements_per_token_per_layer"] == "2*2*D" and row["decode"] is True
    eager = next(b for b in json.loads(out)["backends"] if b["name"] == "eager")
    assert NAME in eager["variants"]  # a backend that serves every variant serves the new one


def test_kv_planning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["kv", "--preset", "llama-3-8b", "--variant", NAME, "--json"], capsys)
    assert code == 0
    row = json.loads(out)["variants"][0]
    assert row["bytes_per_token_per_layer"] == 2 * 2 * 128 * 2  # K and V, 2 groups, D = 128, bf16


def test_swept_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "new.toml"
    suite.write_text(f'name = "new"\n[settings]\nbudget_s = 0.01\nwarmup_s = 0.0\nmin_samples = 3\n'
                     f'[[grid]]\nmodel = "tiny"\nvariant = ["{NAME}", "gqa"]\nbackend = ["eager", "sdpa"]\n'
                     f'mode = ["decode"]\nbatch = [2]\nseq_len = [32]\n')
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-probe"], capsys)
    assert code == 0, err
    with (out / schema.RESULTS_CSV).open() as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == NAME]
    assert {r["backend"] for r in rows} == {"eager", "sdpa"}
    assert all(r["status"] == "ok" for r in rows)
    assert all(int(r["kv_cache_bytes"]) == int(r["kv_cache_bytes_measured"]) == 2 * 32 * 2 * 2 * 32 * 4
               for r in rows)  # batch 2 x 32 slots x K,V x 2 groups x D = 32 x fp32
    assert all(r["num_kv_heads"] == "2" for r in rows)
    assert NAME in (out / schema.REPORT_HTML).read_text()
