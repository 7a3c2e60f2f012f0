"""The analytic model agrees with what the modules allocate and with the published figures of docs/variants.md §9."""

from __future__ import annotations

import pytest

from mlabench import analytic
from mlabench.config import PRESETS, AttentionShape, ShapeError, from_name, validate_case_dims
from mlabench.step import Step, decode_step, prefill_step
from mlabench.variants import VARIANT_CLASSES, build_variant, shape_for_variant
from mlabench.variants.registry import torch_dtype

DTYPES = ("float32", "bfloat16", "float16")
SHAPES = [
    from_name("tiny"),
    AttentionShape(hidden_size=64, num_heads=6, num_kv_heads=3, head_dim=10, q_lora_rank=0, kv_lora_rank=6,
                   rope_head_dim=4, v_head_dim=12, q_rank=3, k_rank=2, v_rank=1, index_heads=3, index_head_dim=6,
                   topk=5),
]


@pytest.mark.parametrize("variant", list(VARIANT_CLASSES))
@pytest.mark.parametrize("shape_idx", range(len(SHAPES)))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "seq_len"), [(1, 7), (3, 32)])
def test_analytic_cache_bytes_equal_allocated_nbytes(variant: str, shape_idx: int, dtype: str,
                                                     batch: int, seq_len: int) -> None:
    shape = SHAPES[shape_idx].replace(dtype=dtype)
    try:
        shape_for_variant(variant, shape)
    except ShapeError as exc:
        pytest.skip(f"{variant} cannot run this shape: {exc}")  # dsa without a query latent
    m = build_variant(variant, shape, dtype=torch_dtype(dtype))
    m.allocate_cache(batch, seq_len)
    assert analytic.kv_cache_bytes(variant, shape, batch, seq_len) == m.cache_nbytes()
    assert analytic.param_count(variant, shape, seq_len=seq_len) == sum(p.numel() for p in m.parameters())


def test_published_kv_figures() -> None:
    v3 = from_name("deepseek-v3")
    assert analytic.kv_cache_bytes("mla-absorbed", v3, 1, 1) == 1152
    assert analytic.kv_cache_bytes("mla-latent", v3, 1, 1) == 1152
    assert analytic.kv_cache_bytes("mla-expanded", v3, 1, 1) == 81920
    layers = v3.num_layers
    assert analytic.kv_cache_bytes("mla-absorbed", v3, 1, 1, layers=layers) / 1024 == pytest.approx(68.6, abs=0.05)
    assert analytic.kv_cache_bytes("mla-expanded", v3, 1, 1, layers=layers) / 2**20 == pytest.approx(4.77, abs=0.01)
    l8 = from_name("llama-3-8b")
    assert analytic.kv_cache_bytes("gqa", l8, 1, 1) == 4096
    assert analytic.kv_cache_bytes("gqa", l8, 1, 1, layers=l8.num_layers) == 128 * 1024
    per_token_kib = {"deepseek-v2": 67.5, "deepseek-v2-lite": 30.4, "llama-3-70b": 320, "qwen2.5-7b": 56}
    for name, kib in per_token_kib.items():
        sh = PRESETS[name]
        variant = "mla-absorbed" if sh.kv_lora_rank else "gqa"
        assert analytic.kv_cache_bytes(variant, sh, 1, 1, layers=sh.num_layers) / 1024 == pytest.approx(kib, abs=0.05)


def test_deepseek_paper_table_1_formulas() -> None:
    """Elements per token per layer: MHA 2*n_h*d_h, GQA 2*n_g*d_h, MQA 2*d_h, MLA d_c + d_r."""
    v2 = from_name("deepseek-v2")
    assert analytic.kv_elements_per_token("mha", v2) == 2 * 128 * 128
    assert analytic.kv_elements_per_token("gqa", v2.replace(num_kv_heads=8)) == 2 * 8 * 128
    assert analytic.kv_elements_per_token("mqa", v2) == 2 * 128
    assert analytic.kv_elements_per_token("mla-absorbed", v2) == 512 + 64


def test_mla_cost_ratios_from_mla_md() -> None:
    """Absorbed: 3.4x expanded's core FLOPs, 71x fewer cache bytes at H = 128."""
    v3 = from_name("deepseek-v3")
    step = decode_step(1, 4096, 1)
    ratio = analytic.core_flops("mla-absorbed", v3, step) / analytic.core_flops("mla-expanded", v3, step)
    assert ratio == pytest.approx(3.4)
    cache = analytic.kv_elements_per_token("mla-expanded", v3) / analytic.kv_elements_per_token("mla-absorbed", v3)
    assert cache == pytest.approx(71.1, abs=0.05)


def test_attention_param_claims() -> None:
    """hidden 256, 8 heads: MQA has 0.5625 and GQA (4 groups) 0.75 of MHA's parameters."""
    sh = from_name("tiny", hidden_size=256, num_heads=8, head_dim=32, num_kv_heads=4)
    mha = analytic.param_count("mha", sh)
    assert analytic.param_count("mqa", sh) / mha == 0.5625
    assert analytic.param_count("gqa", sh) / mha == 0.75


def test_lowrank_claim_ratio() -> None:
    sh = from_name("llama-3-8b", dtype="float16", num_kv_heads=32, kv_lora_rank=32)
    mha = analytic.kv_cache_bytes("mha", sh, 1, 2048)
    assert mha == 32 * 2**20
    assert analytic.kv_cache_bytes("lowrank-kv", sh, 1, 2048) * 4 == mha


def test_attended_pairs_and_steps() -> None:
    assert prefill_step(1, 4).attended_pairs == 1 + 2 + 3 + 4
    step = decode_step(2, 10, 2)
    assert (step.context, step.new_tokens, step.total) == (8, 2, 10)
    assert step.attended_pairs == 9 + 10
    assert Step(1, 0, 4, causal=False).attended_pairs == 16


def test_decode_bytes_dominated_by_cache_at_long_context() -> None:
    lite = from_name("deepseek-v2-lite")
    step = decode_step(64, 32768, 1)
    cache = analytic.kv_cache_bytes("mla-absorbed", lite, 64, 32768)
    total = analytic.bytes_moved("mla-absorbed", lite, step)
    assert cache < total < 1.1 * cache


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_kv_heads": 5}, "num_kv_heads"),
        ({"num_heads": 0}, "num_heads"),
        ({"hidden_size": -1}, "hidden_size"),
        ({"head_dim": 2.5}, "head_dim"),
        ({"rope_head_dim": 7}, "rope_head_dim"),
        ({"kv_lora_rank": -3}, "kv_lora_rank"),
        ({"dtype": "int7"}, "dtype"),
        ({"rope_scaling_factor": 0.5}, "rope_scaling_factor"),
        ({"num_layers": 0}, "num_layers"),
        ({"not_a_field": 1}, "not_a_field"),
    ],
)
def test_invalid_shapes_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ShapeError, match=field) as info:
        from_name("tiny", **overrides)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("variant", "overrides", "field"),
    [
        ("mla-absorbed", {"kv_lora_rank": 0}, "kv_lora_rank"),
        ("mla-latent", {"rope_head_dim": 0}, "rope_head_dim"),
        ("lowrank-kv", {"kv_lora_rank": 32}, "kv_lora_rank"),
        ("gqa", {"head_dim": 31}, "head_dim"),
        ("mha", {"head_dim": 31}, "head_dim"),
        ("lowrank-kv", {"head_dim": 31, "kv_lora_rank": 16}, "head_dim"),  # rotate-half RoPE turns pairs
        ("warp-attention", {}, "variant"),
    ],
)
def test_invalid_shape_for_variant(variant: str, overrides: dict, field: str) -> None:
    with pytest.raises(ShapeError, match=field):
        shape_for_variant(variant, from_name("tiny", **overrides))


def test_invalid_case_dims() -> None:
    with pytest.raises(ShapeError, match="q_len"):
        validate_case_dims(1, 4, 8)
    with pytest.raises(ShapeError, match="batch"):
        validate_case_dims(0, 4, 1)
    with pytest.raises(ShapeError, match="model"):
        from_name("gpt-17")
