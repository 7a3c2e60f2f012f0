"""KV bytes per GPU under tensor parallelism (docs/variants.md §6): the base-class contract, `mlabench kv
--tp`, the sweep's `tp` setting and column, and the report's per-GPU KV line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from cli_run import run_cli

from mlabench import analytic
from mlabench.config import AttentionShape, from_name
from mlabench.report.charts import kv_chart
from mlabench.variants import VARIANT_CLASSES, AttentionVariant, shape_for_variant

SHAPE = AttentionShape(hidden_size=64, num_heads=8, num_kv_heads=2, head_dim=16, rope_head_dim=8, q_lora_rank=16,
                       kv_lora_rank=32, num_latent_heads=4)


@pytest.mark.parametrize("variant", list(VARIANT_CLASSES))
def test_tp_1_is_the_whole_cache_and_more_gpus_never_hold_more(variant: str) -> None:
    try:
        sh = shape_for_variant(variant, SHAPE)
    except ValueError:
        pytest.skip(f"{variant} cannot run this shape")
    whole = analytic.kv_cache_bytes(variant, sh, 2, 5)
    shares = [analytic.kv_cache_bytes_per_gpu(variant, sh, 2, 5, tp) for tp in (1, 2, 4, 8)]
    assert shares[0] == whole
    assert all(a >= b for a, b in zip(shares, shares[1:], strict=False))
    assert all(share * tp >= whole for share, tp in zip(shares, (1, 2, 4, 8), strict=True))  # nothing lost


def test_section_6_at_this_shape() -> None:
    """G = 2, h_c = 4 of d_g = 8, d_r = 8 at tp 4: GQA copies its KV heads, GLA splits its latent heads."""
    per_gpu = {v: analytic.kv_elements_per_token_per_gpu(v, SHAPE, 4) for v in
               ("gqa", "mha", "gta", "gla-absorbed", "mla-absorbed", "mla-expanded")}
    assert per_gpu == {"gqa": 2 * 1 * 16,  # ceil(G/N) = 1 KV head, copied on two GPUs each
                       "mha": 2 * 2 * 16, "gta": 1 * 16 + 8, "gla-absorbed": 1 * 8 + 8, "mla-absorbed": 32 + 8,
                       "mla-expanded": 2 * (24 + 16)}
    assert analytic.kv_elements_per_token_per_gpu("lowrank-kv", SHAPE.replace(kv_lora_rank=4), 4) == 2 * 2 * 4


def test_a_variant_without_a_tp_model_says_so() -> None:
    class Bare(AttentionVariant):
        name = "bare"

        @classmethod
        def kv_elements_per_token(cls, sh: AttentionShape) -> int:
            return 7

    assert Bare.kv_elements_per_token_per_gpu(SHAPE, 1) == 7
    with pytest.raises(NotImplementedError, match="bare.*tensor-parallel"):
        Bare.kv_elements_per_token_per_gpu(SHAPE, 2)


def test_kv_tp_prints_per_gpu_figures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["kv", "--preset", "gla-xl", "--tp", "2", "--seq-len", "4096", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    rows = {r["variant"]: r for r in doc["variants"]}
    assert doc["tp"] == 2 and doc["analytic"] is True
    assert rows["gla-absorbed"]["bytes_per_token_per_layer_per_gpu"] == 640
    assert rows["mla-absorbed"]["bytes_per_token_per_layer_per_gpu"] == 1152
    assert rows["gla-absorbed"]["batch_bytes_per_gpu"] == 640 * 24 * 4096
    code, out, err = run_cli(["kv", "--preset", "gla-xl", "--tp", "2"], capsys)
    assert code == 0 and "640 B" in out and "analytic" in err


@pytest.mark.parametrize("tp", ["3", "0"])
def test_kv_refuses_a_tp_that_does_not_divide_the_heads(tp: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["kv", "--preset", "gla-xl", "--tp", tp], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mlabench: error: --tp")


def test_sweep_refuses_a_tp_that_does_not_divide_the_heads(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--model", "tiny", "--variant", "gqa", "--tp", "3", "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "tp" in err and "num_heads (8)" in err


def test_sweep_rows_carry_tp_and_the_per_gpu_share() -> None:
    from mlabench.case import Case
    from mlabench.runner import analytic_columns

    sh = shape_for_variant("gla-absorbed", from_name("gla-xl"))
    case = Case("t", "gla-xl", "gla-absorbed", "eager", "decode", "cpu", 2, 100, 1, sh, tp=2)
    cols = analytic_columns(case)
    assert case.key["tp"] == 2 and case.key["dist_backend"] == "gloo"
    assert cols["kv_cache_bytes_per_gpu"] == 640 * 2 * 100
    assert cols["kv_cache_bytes"] == 1152 * 2 * 100
    unsharded = Case("t", "gla-xl", "gla-absorbed", "eager", "decode", "cpu", 2, 100, 1, sh)
    assert analytic_columns(unsharded)["kv_cache_bytes_per_gpu"] == cols["kv_cache_bytes"]
    assert unsharded.key["dist_backend"] == "" and unsharded.case_id != case.case_id


def _rows(tp: int) -> pd.DataFrame:
    return pd.DataFrame({"variant": ["gla-absorbed", "mla-absorbed"], "model": "gla-xl", "backend": "eager",
                         "mode": "decode", "batch": 1, "seq_len": 1024, "q_len": 1, "status": "ok", "tp": tp,
                         "kv_cache_bytes": [1152 * 1024] * 2, "kv_cache_bytes_measured": [1152 * 1024] * 2,
                         "kv_cache_bytes_per_gpu": [(640 if tp == 2 else 1152) * 1024, 1152 * 1024]})


def test_report_kv_chart_draws_the_per_gpu_share_only_when_tp_above_1() -> None:
    names = {t.name for t in kv_chart(_rows(2)).figure.data}
    assert any("one GPU" in n for n in names)
    per_gpu = [t for t in kv_chart(_rows(2)).figure.data if "one GPU" in t.name]
    assert sorted(y for t in per_gpu for y in t.y) == [640 * 1024, 1152 * 1024]
    assert not any("one GPU" in t.name for t in kv_chart(_rows(1)).figure.data)


STRADDLE = ["--set", "num_heads=6", "--set", "num_kv_heads=2", "--tp", "3"]  # GPU 1 holds heads 2-3: groups 0 and 1


@pytest.mark.parametrize(("variant", "tp", "groups"), [("gqa", 3, 2), ("gta", 3, 2), ("gla-absorbed", 3, 2),
                                                       ("gqa", 4, 6), ("gla-expanded", 6, 4)])
def test_a_split_that_straddles_kv_groups_is_refused(variant: str, tp: int, groups: int) -> None:
    h = 12
    sh = shape_for_variant(variant, SHAPE.replace(num_heads=h, num_kv_heads=groups, num_latent_heads=groups,
                                                  kv_lora_rank=8 * groups))
    with pytest.raises(ValueError, match=f"degree {tp} is neither a divisor nor a multiple of the {groups} KV"):
        analytic.kv_bytes_per_token_per_gpu(variant, sh, tp)


@pytest.mark.parametrize("variant", ["gqa", "gta", "gla-absorbed"])
def test_divisors_and_multiples_of_the_groups_are_accepted(variant: str) -> None:
    sh = shape_for_variant(variant, SHAPE.replace(num_heads=12, num_kv_heads=2, num_latent_heads=2, kv_lora_rank=16))
    shares = [analytic.kv_elements_per_token_per_gpu(variant, sh, tp) for tp in (1, 2, 4, 6, 12)]
    assert shares[1] < shares[0] and shares[1] == shares[2] == shares[3] == shares[4]  # past G a group is copied


def test_kv_refuses_a_straddling_split(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["kv", "--preset", "tiny", *STRADDLE], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mlabench: error: --tp") and "2 KV groups" in err


def test_sweep_refuses_a_straddling_split_before_any_case(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--model", "tiny", "--variant", "mla-absorbed,gqa", *STRADDLE,
                            "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "2 KV groups" in err
    assert not (out / "results.csv").exists()


def _tp_rows(tmp_path, off_by: dict[str, int]) -> Path:
    """A run directory of ok tp rows (gla-xl at tp 1 and 2) whose measured per-GPU bytes equal the
    formula, except `off_by`'s variants."""
    import csv

    from mlabench import schema
    from mlabench.case import Case
    from mlabench.runner import analytic_columns

    rows = []
    for variant in ("gqa", "gta", "gla-absorbed", "mla-absorbed"):
        sh = shape_for_variant(variant, from_name("gla-xl"))
        for tp in (1, 2):
            case = Case("tp", "gla-xl", variant, "eager", "decode", "cpu", 1, 16, 1, sh, tp=tp)
            cols = analytic_columns(case)
            measured = cols["kv_cache_bytes_per_gpu"] + off_by.get(variant, 0)
            rows.append({**case.key, **cols, "case_id": case.case_id, "status": "ok", "latency_ms": 1.0 + tp,
                         "comm_ms": 0.5 if tp > 1 else None, "comm_share": 0.5 / 3 if tp > 1 else None,
                         "kv_cache_bytes_measured": cols["kv_cache_bytes"] if tp == 1 else None,
                         "kv_cache_bytes_per_gpu_measured": measured if tp > 1 else None})
    run = tmp_path / "20260101T000000Z-tp-cpu"
    run.mkdir(parents=True)
    with (run / schema.RESULTS_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=schema.COLUMNS)
        writer.writeheader()
        writer.writerows({c: ("" if r.get(c) is None else r.get(c)) for c in schema.COLUMNS} for r in rows)
    return run


def test_kv_says_which_per_gpu_figures_a_measured_run_confirmed(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tp_rows(tmp_path, off_by={"gta": 1})
    code, out, _ = run_cli(["kv", "--model", "gla-xl", "--tp", "2", "--measured", str(run), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    confirmed = {r["variant"]: r["confirmed_on"] for r in doc["variants"]}
    assert doc["measured_run"] == str(run)
    assert confirmed["gla-absorbed"] == confirmed["mla-absorbed"] == confirmed["gqa"] == ["gla-xl"]
    assert confirmed["gta"] == []  # its ranks disagreed with the formula: not confirmed
    assert confirmed["mha"] == []  # not measured at this degree
    code, _, err = run_cli(["kv", "--model", "gla-xl", "--tp", "2", "--measured", str(run)], capsys)
    assert code == 0 and "gla-absorbed (on gla-xl)" in err and "gta (on" not in err
    code, _, err = run_cli(["kv", "--model", "gla-xl", "--tp", "2", "--measured", str(tmp_path / "none")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--measured" in err


def test_the_tp_chart_sets_measured_per_gpu_bytes_over_the_formula(tmp_path) -> None:
    from mlabench.report.tp_chart import tp_chart
    from mlabench.rundir import load_run

    df = load_run(_tp_rows(tmp_path, off_by={})).results
    chart = tp_chart(df)
    assert chart is not None and chart.figure is not None
    traces = {t.name: t for t in chart.figure.data}
    per_token = {v: list(traces[f"gla-xl {v}"].y) for v in ("gla-absorbed", "mla-absorbed", "gqa")}
    assert per_token["mla-absorbed"] == [1152, 1152]  # the latent whole on every GPU
    assert per_token["gla-absorbed"] == [1152, 640] and per_token["gqa"] == [2048, 1024]
    assert list(traces["gla-xl gla-absorbed (formula)"].y) == [1152, 640]
    assert traces["gla-xl gla-absorbed (formula)"].line.dash == "dash"
    assert list(traces["gla-xl gqa all-reduce"].y) == [0.5]
    assert tp_chart(df[df["tp"] == 1]) is None  # nothing sharded: no chart


def test_dry_run_counts_device_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["sweep", "--model", "tiny", "--variant", "gqa", "--mode", "decode", "--backend", "eager",
                            "--tp", "1,2,4", "--dry-run", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    # tp = N holds N devices: device-seconds exceed seconds spent in cases (here 1 + 2 + 4 cases' worth)
    per_case = (doc["estimated_s_by_backend"]["eager"]) / 3
    assert doc["estimated_device_s"] == pytest.approx(per_case * 7, rel=1e-2)


def test_a_suite_that_still_sets_tp_as_a_setting_is_told_it_is_an_axis(tmp_path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "old.toml"
    suite.write_text('name = "old"\n[settings]\ntp = 2\n[[grid]]\nmodel = "tiny"\nvariant = "gqa"\n')
    code, out, err = run_cli(["sweep", "--suite", str(suite), "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "tp is a case axis" in err
