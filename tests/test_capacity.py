"""The capacity planner: per-variant cache bytes, what fits a budget, and its inverse questions.

Figures are checked against the variants' own formulas written out here (DeepSeek-V3: 61
layers, latent 512 + RoPE key 64 in bf16 = 1,152 B per token per layer), and the inverse
answers against the forward one: `max_batch` sequences fit, one more does not.
"""

from __future__ import annotations

import random

import pytest

from mlabench.capacity import CapacityError, max_batch, max_context, plan_capacity
from mlabench.config import from_name

V3 = from_name("deepseek-v3", dtype="bfloat16")
GIB = 2**30


def test_rows_follow_the_cache_formulas() -> None:
    rows = {r.variant: r for r in plan_capacity(V3, batch=8, seq_len=131072, memory=80 * GIB)}
    mla = rows["mla-absorbed"]
    assert mla.bytes_per_token_per_layer == (512 + 64) * 2 and mla.bytes_per_token == 1152 * 61
    assert mla.batch_bytes == mla.batch_bytes_per_gpu == 1152 * 61 * 8 * 131072
    assert mla.max_seq_len == 80 * GIB // (1152 * 61 * 8) and mla.fits is True
    assert rows["mha"].bytes_per_token_per_layer == 2 * 128 * 128 * 2 and rows["mha"].fits is False
    assert "gqa" not in rows  # at G = H it is mha, shown once
    assert plan_capacity(V3, ["mla-absorbed"], batch=8, seq_len=131072)[0].fits is None  # no budget, no verdict


def test_a_paged_cache_holds_whole_pages_and_fp8_counts_its_scales() -> None:
    (contiguous,) = plan_capacity(V3, ["mla-absorbed"], batch=3, seq_len=1000)
    (paged,) = plan_capacity(V3, ["mla-absorbed"], batch=3, seq_len=1000, page_size=64)
    assert contiguous.batch_bytes == 1152 * 61 * 3 * 1000
    assert paged.batch_bytes == 1152 * 61 * 3 * 1024  # 16 pages of 64 per sequence
    (fp8,) = plan_capacity(from_name("deepseek-v3", dtype="bfloat16", kv_dtype="fp8_e4m3"), ["mla-absorbed"])
    assert fp8.bytes_per_token_per_layer == 512 + 4 * 4 + 64 * 2  # FP8 latent, a scale per 128, bf16 RoPE key
    assert plan_capacity(V3, ["mla-absorbed"], layers=30)[0].bytes_per_token == 1152 * 30  # one pipeline stage


def test_tensor_parallel_rows_are_one_gpus_share() -> None:
    llama = from_name("llama-3-8b", dtype="bfloat16")
    (gqa,) = plan_capacity(llama, ["gqa"], tp=8)
    assert gqa.bytes_per_token_per_layer == 2 * 8 * 128 * 2 and gqa.bytes_per_token_per_layer_per_gpu == 2 * 128 * 2
    with pytest.raises(CapacityError, match="tp: tensor-parallel degree 3") as info:
        plan_capacity(llama, ["gqa"], tp=3)
    assert info.value.param == "tp"


@pytest.mark.parametrize(("variants", "param"), [(["mla-absorbed"], "variant"), (["nope"], "variant")])
def test_named_variants_that_cannot_serve_are_refused(variants: list[str], param: str) -> None:
    with pytest.raises(CapacityError) as info:
        plan_capacity(from_name("llama-3-8b"), variants)  # no latent ranks: no MLA
    assert info.value.param == param and variants[0] in str(info.value)


def _draws(n: int) -> list[tuple[int, int, int, int, str]]:
    rng = random.Random(29)  # fresh values each case, the same list every run
    return [(rng.randint(1, 1 << 20), rng.randint(1, 1 << 40), rng.choice([0, 16, 64]), rng.choice([1, 2, 8]),
             rng.choice(["mha", "mla-absorbed", "gla-absorbed"])) for _ in range(n)]


@pytest.mark.parametrize(("seq_len", "memory", "page", "tp", "variant"), _draws(40))
def test_max_batch_and_max_context_are_the_edges_of_what_fits(seq_len: int, memory: int, page: int, tp: int,
                                                               variant: str) -> None:
    def fits(batch: int, context: int) -> bool:
        (row,) = plan_capacity(V3, [variant], batch=batch, seq_len=context, tp=tp, page_size=page)
        return row.batch_bytes_per_gpu <= memory

    most = max_batch(variant, V3, seq_len, memory, tp, page)
    assert (most == 0 or fits(most, seq_len)) and not fits(most + 1, seq_len)
    longest = max_context(variant, V3, 2, memory, tp, page)
    assert (longest == 0 or fits(2, longest)) and not fits(2, longest + (page or 1))
