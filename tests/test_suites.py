"""Suite files: parsing, every error path, grid expansion, sharding."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlabench.backends import served_variants
from mlabench.errors import UsageError
from mlabench.suites import available_suites, expand, load_suite, parse_shard, shard

GOOD = """
name = "t"
description = "test"
[settings]
budget_s = 0.01
[defaults]
backend = ["eager"]
[[grid]]
model = "tiny"
variant = ["mha", "mla-absorbed", "linformer"]
mode = ["prefill", "decode"]
batch = [1, 2]
seq_len = [16, 32]
q_len = [1, 2]
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "suite.toml"
    p.write_text(text)
    return str(p)


def test_shipped_suites_load_and_expand() -> None:
    suites = available_suites()
    assert {"smoke", "decode", "prefill", "latent-rank", "claims"} <= set(suites)
    for name in suites:
        s = load_suite(name)
        for device in ("cpu", "cuda:0"):
            cases = expand(s, device, served_variants()).cases
            assert cases, name
            assert len({c.case_id for c in cases}) == len(cases)


def test_expansion(tmp_path: Path) -> None:
    s = load_suite(write(tmp_path, GOOD))
    cases = expand(s, "cpu", served_variants()).cases
    # prefill: 3 variants x 2 batch x 2 seq (q_len does not multiply prefill); decode: x 2 q_len
    assert len(cases) == 3 * 2 * 2 + 3 * 2 * 2 * 2
    assert all(c.q_len == c.seq_len for c in cases if c.mode == "prefill")
    assert {c.dtype for c in cases} == {"float32"}  # auto on CPU
    assert {c.dtype for c in expand(s, "cuda:0", served_variants()).cases} == {"bfloat16"}
    mha = next(c for c in cases if c.variant == "mha")
    assert mha.key["num_kv_heads"] == mha.key["num_heads"]  # mha forces G = H in the key


def test_overrides_replace_axes(tmp_path: Path) -> None:
    s = load_suite(write(tmp_path, GOOD))
    cases = expand(s, "cpu", served_variants(), {"variant": ["gqa"], "batch": [4], "num_kv_heads": [4]}).cases
    assert {c.variant for c in cases} == {"gqa"}
    assert {c.batch for c in cases} == {4}
    assert {c.shape.kv_heads for c in cases} == {4}


def test_invalid_combinations_are_dropped_with_reasons(tmp_path: Path) -> None:
    text = GOOD.replace('model = "tiny"', 'model = ["tiny", "llama-3-8b"]')
    text = text.replace("seq_len = [16, 32]", "seq_len = [1, 32]")
    exp = expand(load_suite(write(tmp_path, text)), "cpu", served_variants())
    assert exp.dropped
    assert any("kv_lora_rank" in d for d in exp.dropped)  # MLA on llama
    assert any("q_len" in d for d in exp.dropped)  # q_len 2 > seq_len 1
    assert not any(c.model == "llama-3-8b" and c.variant.startswith("mla") for c in exp.cases)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name = ", "not valid TOML"),
        ("name = 'x'", "at least one [[grid]]"),
        (GOOD + "\nbogus = 1\n", "unknown key 'bogus'"),
        (GOOD.replace("seq_len = [16, 32]", "seq_lenn = [16]"), "unknown key 'seq_lenn'"),
        (GOOD.replace('"mha",', '"mah",'), "variant 'mah'"),
        (GOOD.replace('model = "tiny"', 'model = "gpt-5"'), "model 'gpt-5'"),
        (GOOD.replace('backend = ["eager"]', 'backend = ["cuda-magic"]'), "backend 'cuda-magic'"),
        (GOOD.replace('mode = ["prefill", "decode"]', 'mode = ["train"]'), "mode 'train'"),
        (GOOD.replace("batch = [1, 2]", "batch = [0]"), "batch"),
        (GOOD.replace("batch = [1, 2]", "batch = [-4]"), "batch"),
        (GOOD.replace("batch = [1, 2]", "batch = []"), "empty list"),
        (GOOD.replace("batch = [1, 2]", "batch = [[1]]"), "scalars"),
        (GOOD.replace("budget_s = 0.01", "budget_s = -1"), "budget_s"),
        (GOOD.replace("budget_s = 0.01", "budgett = 1"), "unknown setting 'budgett'"),
        (GOOD + '\n[[grid]]\nmodel = "llama-3-8b"\nvariant = "mla-absorbed"\n', "no valid case"),
        (GOOD.replace("[defaults]", "[defaults]\ndtype = 'int4'"), "dtype"),
        (GOOD.replace('model = "tiny"', 'model = "tiny"\nnum_kv_heads = 3'), "num_kv_heads"),
    ],
)
def test_bad_suites_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=None) as info:
        expand(load_suite(write(tmp_path, text)), "cpu", served_variants())
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_suite_name_and_missing_file() -> None:
    with pytest.raises(UsageError, match="unknown suite 'nope'"):
        load_suite("nope")
    with pytest.raises(UsageError, match="not found"):
        load_suite("/no/such/suite.toml")


def test_shards_partition_the_grid(tmp_path: Path) -> None:
    cases = expand(load_suite(write(tmp_path, GOOD)), "cpu", served_variants()).cases
    parts = [shard(cases, k, 3) for k in (1, 2, 3)]
    ids = [c.case_id for p in parts for c in p]
    assert sorted(ids) == sorted(c.case_id for c in cases)
    assert all(parts)
    assert [c.case_id for c in shard(cases, 2, 3)] == [c.case_id for c in parts[1]]  # deterministic


@pytest.mark.parametrize("text", ["3", "0/2", "3/2", "a/b", "1/0"])
def test_bad_shard_specs(text: str) -> None:
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)
