"""The serving frontier: B_max by hand from each design's cache formula, tokens/s from the same row,
the refusals, and one small frontier run end to end on the CPU."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from cli_run import assert_one_error_line, run_cli

from mlabench.config import from_name
from mlabench.errors import UsageError
from mlabench.frontier.plan import frontier_suite, plan_frontier
from mlabench.frontier.record import FrontierPlan, read_plan
from mlabench.frontier.table import frontier_rows, tokens_per_s, winners

GiB, MiB = 2**30, 2**20


def _by_hand(per_token_per_layer: int, layers: int, slots: int, budget: int) -> int:
    """B_max from the figures a reader computes with pencil: bytes per sequence = per token per layer x
    layers x the slots one sequence holds."""
    per_seq = per_token_per_layer * layers * slots
    return budget // per_seq


# (model, variant, dtype, kv_dtype, tp, cache_layout, context, budget, per token per layer per GPU, layers, slots)
CASES = [
    # MHA at llama-3-8b dims in bf16: K and V of 32 heads of 128, 2 bytes each.
    ("llama-3-8b", "mha", "bfloat16", "", 1, 0, 4096, 10 * GiB, 2 * 32 * 128 * 2, 32, 4096),
    # GQA: 8 KV heads.
    ("llama-3-8b", "gqa", "bfloat16", "", 1, 0, 4096, 10 * GiB, 2 * 8 * 128 * 2, 32, 4096),
    # MLA's latent and RoPE key, 512 + 64 values in bf16 (1,152 B), 61 layers.
    ("deepseek-v3", "mla-absorbed", "bfloat16", "", 1, 0, 32768, 80 * GiB, (512 + 64) * 2, 61, 32768),
    # FP8 MLA in DeepSeek's row: 512 FP8 values, 4 fp32 scales, 64 bf16 RoPE values = 656 B.
    ("deepseek-v3", "mla-absorbed", "bfloat16", "fp8_e4m3", 1, 0, 32768, 80 * GiB, 512 + 4 * 4 + 64 * 2, 61, 32768),
    # GLA-2 at gla-xl on 2 GPUs: one 256-wide latent head each plus the shared 64-wide RoPE key, bf16.
    ("gla-xl", "gla-absorbed", "bfloat16", "", 2, 0, 8192, 1 * GiB, (256 + 64) * 2, 24, 8192),
    # MHA at tiny dims in float32, on 256-token pages: a 520-token sequence holds 768 slots.
    ("tiny", "mha", "float32", "", 1, 256, 520, 32 * MiB, 2 * 8 * 32 * 4, 4, 768),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}-{c[0]}-{c[3] or c[2]}-tp{c[4]}-page{c[5]}" for c in CASES])
def test_max_batch_by_hand_and_one_more_does_not_fit(case: tuple) -> None:
    model, variant, dtype, kv_dtype, tp, page, context, budget, per_token, layers, slots = case
    shape = from_name(model, dtype=dtype, kv_dtype=kv_dtype)
    plan = plan_frontier(shape, model, [context], budget, max_batch=10**9, variants=[variant], tp=tp, page_size=page)
    (point,) = plan.points
    expected = _by_hand(per_token, layers, slots, budget)
    assert expected > 0
    assert point.max_batch == expected
    per_seq = per_token * layers * slots
    assert point.kv_bytes_per_gpu == expected * per_seq <= budget < (expected + 1) * per_seq


def test_reserve_and_cap_shrink_the_batch() -> None:
    shape = from_name("llama-3-8b", dtype="bfloat16")
    per_seq = 2 * 8 * 128 * 2 * 32 * 4096
    plan = plan_frontier(shape, "llama-3-8b", [4096], 40 * GiB, reserve=16 * GiB, max_batch=1000, variants=["gqa"])
    assert plan.points[0].max_batch == (24 * GiB) // per_seq and not plan.points[0].capped
    capped = plan_frontier(shape, "llama-3-8b", [4096], 40 * GiB, max_batch=3, variants=["gqa"])
    assert capped.points[0].max_batch == 3 and capped.points[0].capped


def test_a_point_past_the_budget_is_kept_with_its_reason_and_not_measured() -> None:
    shape = from_name("tiny", dtype="float32")
    per_seq_2048 = 2 * 8 * 32 * 4 * 4 * 2048  # mha: 16 MiB per sequence of 2048 tokens
    plan = plan_frontier(shape, "tiny", [256, 2048], per_seq_2048 - 1, variants=["mha", "mla-absorbed"])
    long_mha = next(p for p in plan.points if p.variant == "mha" and p.context == 2048)
    assert long_mha.max_batch == 0 and not long_mha.measured and "budget" in long_mha.reason
    suite = frontier_suite(plan)
    assert {(g["variant"][0], g["seq_len"][0]) for g in suite.grids} == \
        {(p.variant, p.context) for p in plan.points if p.max_batch}
    assert all(g["batch"] == [p.max_batch] for g, p in zip(suite.grids, [p for p in plan.points if p.max_batch],
                                                           strict=True))


def test_a_budget_that_fits_no_sequence_at_the_shortest_context_is_refused() -> None:
    shape = from_name("tiny", dtype="float32")
    with pytest.raises(UsageError, match="--memory: .*fits not even one sequence of 256 tokens"):
        plan_frontier(shape, "tiny", [256, 512], 1024)
    with pytest.raises(UsageError, match="--reserve"):
        plan_frontier(shape, "tiny", [256], 10 * MiB, reserve=10 * MiB)
    with pytest.raises(UsageError, match="linformer"):
        plan_frontier(shape, "tiny", [256], 10 * MiB, variants=["linformer"])


def _synthetic(plan: FrontierPlan, rng: random.Random) -> pd.DataFrame:
    rows = []
    for p in plan.points:
        for backend in ("eager", "sdpa"):
            rows.append({"suite": "frontier", "variant": p.variant, "backend": backend, "batch": float(p.max_batch),
                         "seq_len": float(p.context), "status": "ok", "latency_ms": rng.uniform(0.05, 50.0),
                         "error": None})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(3))
def test_tokens_per_s_is_the_batch_over_layers_and_latency_of_the_same_row(seed: int) -> None:
    rng = random.Random(seed)
    tp = rng.choice([1, 2])
    shape = from_name("gla-xl", dtype="bfloat16")
    plan = plan_frontier(shape, "gla-xl", [1024, 4096, 16384], rng.choice([4, 8, 16]) * GiB, max_batch=10**6,
                         variants=["gqa", "mla-absorbed", "gla-absorbed"], tp=tp)
    results = _synthetic(plan, rng)
    rows = frontier_rows(plan, results)
    assert len(rows) == len(plan.points)
    for row in rows:
        mine = results[(results["variant"] == row.variant) & (results["seq_len"] == row.context)]
        fastest = mine.loc[mine["latency_ms"].idxmin()]
        assert row.backend == fastest["backend"] and row.step_ms == fastest["latency_ms"]
        assert row.tokens_per_s == pytest.approx(row.max_batch / (tp * shape.num_layers * fastest["latency_ms"] / 1e3),
                                                 rel=1e-12)
    for context, best in winners(rows).items():
        assert best.tokens_per_s == max(r.tokens_per_s for r in rows if r.context == context)
    assert tokens_per_s(64, 2.0, 4) == pytest.approx(64 / (4 * 0.002))


def test_failed_and_missing_points_carry_their_status() -> None:
    shape = from_name("tiny", dtype="float32")
    plan = plan_frontier(shape, "tiny", [256], 32 * MiB, variants=["mha", "gqa"])
    results = pd.DataFrame([{"suite": "frontier", "variant": "mha", "backend": "eager",
                             "batch": plan.points[0].max_batch, "seq_len": 256, "status": "error",
                             "latency_ms": None, "error": "boom"}])
    mha, gqa = frontier_rows(plan, results)
    assert (mha.status, mha.note, mha.tokens_per_s) == ("error", "boom", None)
    assert (gqa.status, gqa.tokens_per_s) == ("not run", None)


def test_cli_refuses_a_budget_too_small_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["frontier", "--device", "cpu", "--memory", "1KiB", "--dry-run"], capsys)
    assert_one_error_line(code, err)
    assert "--memory" in err


def test_gpu_frontier_dry_run_sizes_in_device_minutes(capsys: pytest.CaptureFixture[str]) -> None:
    variants = "mha,mla-expanded,mla-latent,mla-absorbed,gla-absorbed,dsa"
    code, out, _ = run_cli(["frontier", "--device", "cuda", "--dry-run", "--json", "--model", "deepseek-v3.2",
                            "--variant", variants, "--context", "4096,8192,16384,32768,131072"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert {p["variant"] for p in doc["plan"]["points"]} == set(variants.split(","))
    assert doc["cases"] >= 5 and doc["estimate"]["estimated_s"] > 0


def test_a_small_frontier_runs_end_to_end(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(["frontier", "--device", "cpu", "--variant", "gqa,mla-absorbed", "--context",
                                 "64,128", "--memory", "2MiB", "--max-batch", "8", "--budget", "0.01",
                                 "--min-samples", "2", "--max-samples", "2", "--warmup", "0", "--no-probe",
                                 "--out", str(out), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    plan = read_plan(out)
    assert plan is not None and doc["plan"]["points"] == json.loads(json.dumps(plan.as_dict()))["points"]
    results = pd.read_csv(out / "results.csv")
    for point in doc["frontier"]:
        row = results[(results["variant"] == point["variant"]) & (results["seq_len"] == point["context"])
                      & (results["backend"] == point["backend"])].iloc[0]
        assert row["status"] == "ok" and row["batch"] == point["max_batch"]
        assert point["tokens_per_s"] == pytest.approx(row["batch"] / (4 * row["latency_ms"] / 1e3), rel=1e-9)
    page = (out / "report.html").read_text()
    assert "Serving frontier" in page and "B_max" in page and "Winner at each context" in page
