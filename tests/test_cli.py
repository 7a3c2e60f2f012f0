"""The small commands: list, env, kv, run; their JSON is one document and their numbers are right."""

from __future__ import annotations

import json

import pytest
from cli_run import run_cli

from mlabench.variants import variant_names


def run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code, out, _ = run_cli([*args, "--json"], capsys)
    return code, json.loads(out)


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(["list"], capsys)
    assert code == 0
    assert [v["name"] for v in doc["variants"]] == list(variant_names())
    backends = {b["name"]: b for b in doc["backends"]}
    assert backends["eager"]["available"] is True
    for b in backends.values():
        assert b["available"] or b["reason"]  # unavailable always says why
    assert backends["triton"]["options"] == ["block_h", "block_n", "num_warps", "num_stages", "num_splits"]
    assert backends["sdpa"]["options"] == ["sdpa_kernel"] and backends["eager"]["options"] == []
    assert {"smoke", "decode", "prefill", "latent-rank", "claims"} <= {s["name"] for s in doc["suites"]}
    assert "deepseek-v3" in {p["name"] for p in doc["presets"]}


def test_kv_deepseek_v3(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(["kv", "--preset", "deepseek-v3", "--seq-len", "131072", "--batch", "8",
                          "--memory", "80GiB"], capsys)
    assert code == 0
    rows = {r["variant"]: r for r in doc["variants"]}
    assert rows["mla-absorbed"]["bytes_per_token_per_layer"] == 1152
    assert rows["mla-expanded"]["bytes_per_token_per_layer"] == 81920
    assert rows["mla-absorbed"]["bytes_per_token"] == 1152 * 61
    assert rows["mla-absorbed"]["batch_bytes"] == 1152 * 61 * 8 * 131072
    assert rows["mla-absorbed"]["max_seq_len"] == 80 * 2**30 // (1152 * 61 * 8)
    assert rows["mla-expanded"]["fits"] is False
    assert "lowrank-kv" not in rows  # d_c 512 is not below head_dim 128


def test_kv_llama(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(["kv", "--preset", "llama-3-8b", "--seq-len", "8192", "--batch", "1"], capsys)
    assert code == 0
    rows = {r["variant"]: r for r in doc["variants"]}
    assert rows["gqa"]["bytes_per_token"] == 128 * 1024
    assert rows["mha"]["bytes_per_token"] == 4 * 128 * 1024
    assert rows["mqa"]["bytes_per_token"] == 128 * 1024 // 8
    assert not any(v.startswith("mla") for v in rows)


def test_env_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(["env", "--device", "cpu"], capsys)
    assert code == 0
    assert doc["device"]["type"] == "cpu"
    assert doc["torch"] and doc["cpu"]["threads"] >= 1


def test_run_one_case(capsys: pytest.CaptureFixture[str]) -> None:
    code, row = run_json(["run", "--model", "tiny", "--variant", "mla-absorbed", "--seq-len", "64", "--q-len", "2",
                          "--budget", "0.01", "--device", "cpu"], capsys)
    assert code == 0
    assert row["status"] == "ok"
    assert row["kv_cache_bytes"] == row["kv_cache_bytes_measured"] == 64 * (16 + 16) * 4
    assert row["rel_err"] < 1e-4 and row["latency_ms"] > 0
