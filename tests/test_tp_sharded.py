"""Tensor-parallel cases on gloo ranks of this CPU: the combined output of the shards equals the
unsharded layer in float64, each rank's cache tensors hold what the per-GPU formula says, a rank
killed mid-case costs that case one `error` row and the sweep goes on.

The rank groups (one per degree) are started once and shared by every test of this module."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_run import run_cli

from mlabench import analytic, schema
from mlabench.case import Case
from mlabench.config import AttentionShape
from mlabench.measure.timing import TimingSettings
from mlabench.runner import RunContext
from mlabench.tp import pool
from mlabench.tp.shard import shard_cache, shard_module
from mlabench.variants import VARIANT_CLASSES, build_variant, shape_for_variant

pytestmark = pytest.mark.xdist_group("processes")  # it starts rank processes, as the Ray tests do

# H = 8 over G = 2 KV groups and h_c = 2 latent heads: N = 2 splits them, N = 4 copies each on two ranks.
SHAPE = AttentionShape(hidden_size=32, num_heads=8, num_kv_heads=2, head_dim=8, rope_head_dim=4, q_lora_rank=16,
                       kv_lora_rank=16, num_latent_heads=2, q_rank=2, k_rank=2, v_rank=2, index_heads=2,
                       index_head_dim=8, topk=4, dtype="float64")
# Spawned rank groups, shared by this module's tests: one pytest-xdist worker takes the module, in turn
# with the other process-heavy modules (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("processes")
SHARDED = [v for v in VARIANT_CLASSES if v != "linformer"]
ONE_SAMPLE = TimingSettings(budget_s=0.0, warmup_s=0.0, min_samples=1, max_samples=1)


def _shape(variant: str) -> AttentionShape:
    return shape_for_variant(variant, SHAPE.replace(kv_lora_rank=4) if variant == "lowrank-kv" else SHAPE)


def _case(variant: str, tp: int, mode: str = "decode", backend: str = "eager") -> Case:
    q_len = 12 if mode == "prefill" else 2
    return Case("tp-test", "tiny", variant, backend, mode, "cpu", 2, 12, q_len, _shape(variant), tp=tp)


@pytest.fixture(scope="module")
def ranks() -> Iterator[RunContext]:
    yield RunContext(device=torch.device("cpu"), timing=ONE_SAMPLE, accuracy=True, seed=3, timeout_s=120.0)
    pool.close_groups()


def test_the_shards_sum_to_the_unsharded_layer_for_every_variant() -> None:
    """In one process, no collective: every variant's 8 shards (one query head each) sum to its output."""
    x = torch.randn(2, 3, SHAPE.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for variant in SHARDED:
        full = build_variant(variant, _shape(variant), "cpu", torch.float64, seed=5)
        full.allocate_cache(2, 12)
        full.fill_cache_random(9, seed=6)
        want = full.reference()(x, 9)
        for world in (8,):
            parts = []
            for rank in range(world):
                shard = shard_module(full, rank, world, torch.device("cpu"))
                shard_cache(full, shard, rank, world)
                assert shard.cache_nbytes() == analytic.kv_cache_bytes_per_gpu(variant, full.shape, 2, 12, world)
                parts.append(shard(x, 9))
            assert (sum(parts) - want).abs().max().item() <= 1e-12, (variant, world)


@pytest.mark.parametrize("tp", [2, 4])
def test_gloo_ranks_give_the_unsharded_output_in_float64(ranks: RunContext, tp: int) -> None:
    for variant in SHARDED:
        for mode in ("decode", "prefill"):
            case = _case(variant, tp, mode)
            row = pool.run_tensor_parallel(case, ranks).row
            # The ranks' partial outputs summed by all_reduce are a sum in another order: ok in float64
            assert row.status == "ok", (variant, mode, row.error)
            assert row.tp == tp and row.dist_backend == "gloo"
            assert row.max_abs_err is not None and row.max_abs_err <= 1e-12, (variant, mode, row.max_abs_err)
            assert row.rel_err <= 1e-12 and row.cos_diff <= 1e-21
            assert row.kv_cache_bytes_per_gpu_measured == row.kv_cache_bytes_per_gpu > 0
            assert row.comm_ms > 0 and 0 < row.comm_share and row.latency_ms > 0


def test_the_per_gpu_cache_follows_each_design(ranks: RunContext) -> None:
    """MLA's latent is on every rank whole; GQA's KV heads and GLA's latent heads split until N = G."""
    measured = {(v, n): pool.run_tensor_parallel(_case(v, n), ranks).row.kv_cache_bytes_per_gpu_measured
                for v in ("mla-absorbed", "gqa", "gla-absorbed") for n in (2, 4)}
    whole = {v: analytic.kv_cache_bytes(v, _shape(v), 2, 12) for v in ("mla-absorbed", "gqa", "gla-absorbed")}
    assert measured["mla-absorbed", 2] == measured["mla-absorbed", 4] == whole["mla-absorbed"]
    assert measured["gqa", 2] == measured["gqa", 4] == whole["gqa"] // 2  # past G = 2 a KV head is copied
    rope = 2 * 12 * SHAPE.rope_head_dim * 8
    assert measured["gla-absorbed", 2] - rope == (whole["gla-absorbed"] - rope) // 2


def test_linformer_and_the_core_scope_are_refused_with_the_reason(ranks: RunContext) -> None:
    row = pool.run_tensor_parallel(_case("linformer", 2, "prefill"), ranks).row
    assert row.status == "unsupported" and "sequence axis" in row.error
    core = Case("tp-test", "tiny", "gqa", "eager", "decode", "cpu", 2, 12, 2, _shape("gqa"), scope="core", tp=2)
    row = pool.run_tensor_parallel(core, ranks).row
    assert row.status == "unsupported" and "whole step" in row.error


KILL_SUITE = """
name = "tp-kill"
[settings]
budget_s = 1.5
warmup_s = 0.0
min_samples = 3
max_samples = 100000
[[grid]]
model = "tiny"
variant = ["mha", "gqa"]
num_kv_heads = 2
tp = 2
mode = "decode"
batch = 1
seq_len = 16
"""


def _kill_rank_1_once_running() -> None:
    """SIGKILL rank 1 of the first group this sweep starts, 0.3 s into its first case."""
    deadline = time.monotonic() + 300
    while not pool._GROUPS and time.monotonic() < deadline:
        time.sleep(0.05)
    if pool._GROUPS:
        time.sleep(0.3)
        os.kill(next(iter(pool._GROUPS.values())).pids[1], signal.SIGKILL)


def test_a_rank_killed_mid_case_is_one_error_row_and_the_sweep_goes_on(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pool.close_groups()  # this test starts its own group, to kill one of its ranks
    suite = tmp_path / "kill.toml"
    suite.write_text(KILL_SUITE)
    out = tmp_path / "run"
    killer = threading.Thread(target=_kill_rank_1_once_running, daemon=True)
    killer.start()
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--no-probe", "--no-report"], capsys)
    killer.join(5)
    with (out / schema.RESULTS_CSV).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert code == 1, err
    assert sorted(r["status"] for r in rows) == ["error", "ok"]
    failed = next(r for r in rows if r["status"] == "error")
    assert "rank 1 of 2 ended (SIGKILL)" in failed["error"]
    assert failed["tp"] == "2" and failed["kv_cache_bytes_per_gpu"]  # the row still has its identity
    done = next(r for r in rows if r["status"] == "ok")
    assert done["kv_cache_bytes_per_gpu_measured"] == done["kv_cache_bytes_per_gpu"]
    assert not pool._GROUPS  # the sweep stopped the group it started
    meta = json.loads((out / schema.META_JSON).read_text())
    assert meta["tensor_parallel"] == {"degrees": [2], "backends": ["gloo"]}


def test_an_isolated_tp_case_runs_on_ranks_its_child_starts_and_stops(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["--model", "tiny", "--variant", "gqa", "--backend", "eager", "--mode", "decode", "--seq-len", "16",
            "--q-len", "1", "--batch", "1", "--tp", "2", "--budget", "0.005", "--warmup", "0.001", "--min-samples", "3"]
    code, _, err = run_cli(["sweep", *args, "--isolate", "--no-probe", "--no-report", "--out", str(out)], capsys)
    with (out / schema.RESULTS_CSV).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert code == 0, err
    assert rows and all((r["status"], r["tp"]) == ("ok", "2") for r in rows)  # the child exited, its ranks too
    assert all(r["kv_cache_bytes_per_gpu_measured"] == r["kv_cache_bytes_per_gpu"] for r in rows)


def test_run_measures_one_tp_case_on_its_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["run", "--model", "tiny", "--variant", "gqa", "--set", "tp=2", "--seq-len", "32",
                              "--budget", "0.005", "--warmup", "0.001", "--min-samples", "3", "--no-probe", "--json"],
                             capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["tp"] == 2 and row["dist_backend"] == "gloo" and row["status"] == "ok"
    assert row["kv_cache_bytes_per_gpu_measured"] == row["kv_cache_bytes_per_gpu"] and row["comm_ms"] > 0
    assert not pool._GROUPS  # stopped once the case was measured
