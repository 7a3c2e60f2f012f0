"""The measurement layer: accuracy flagging, FLOPs and bytes against hand counts, roofline,
quantiles, the cache allocation alone, module parameter counts, CPU threads.

Each test here guards a column's promise: the number in results.csv means what its
name says, or a test fails.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mlabench import analytic
from mlabench.backends.registry import BACKENDS, Prepared, register_backend
from mlabench.case import Case
from mlabench.config import from_name
from mlabench.measure import accuracy as acc
from mlabench.measure.peaks import Peaks, roofline_pct
from mlabench.measure.timing import TimingSettings
from mlabench.runner import RunContext, run_case, summarize_samples
from mlabench.step import decode_step, prefill_step
from mlabench.variants import build_variant, shape_for_variant, variant_class, variant_names

CPU = torch.device("cpu")
TINY = from_name("tiny")
TINY_FP64 = dataclasses.replace(TINY, dtype="float64")
FAST = TimingSettings(budget_s=0.005, warmup_s=0.0, min_samples=3, max_samples=5)


def make_case(variant: str, backend: str = "eager", mode: str = "decode", batch: int = 3, seq_len: int = 24,
              q_len: int = 1, shape=TINY) -> Case:
    sh = shape_for_variant(variant, shape)
    q = seq_len if mode == "prefill" else q_len
    return Case("test", shape.name, variant, backend, mode, "cpu", batch, seq_len, q, sh)


# --- accuracy ------------------------------------------------------------------------------
def test_accuracy_flags_one_wrong_query_row_the_norm_would_hide() -> None:
    """A bf16-sized rounding everywhere plus one entirely wrong row in the last sequence: the
    norm-wise error stays under the bf16 tolerance (the old check passed it), the element-wise
    comparator does not, and names where."""
    g = torch.Generator().manual_seed(11)
    batch, s, d = 8, 1024, 128
    out = torch.randn(batch, s, d, generator=g, dtype=torch.float64)
    rows = acc.reference_rows(batch)
    ref = out[rows].clone()
    out = out * (1 + 2e-3 * torch.randn(out.shape, generator=g, dtype=torch.float64))
    out[-1, -1] = torch.randn(d, generator=g, dtype=torch.float64) * 0.1  # the last query row: wrong
    norm_err = ((out[rows] - ref).norm() / ref.norm()).item()
    assert norm_err < acc.REL_TOLERANCE["bfloat16"]
    result = acc.compare(out.to(torch.bfloat16), ref, "bfloat16")
    assert not result.ok
    assert result.rel_err > acc.REL_TOLERANCE["bfloat16"]
    assert f"sequence {batch - 1}, token {s - 1}" in result.describe()


def test_accuracy_looks_at_the_last_sequence() -> None:
    """Only the last of 8 sequences is wrong: the first-two-sequences check never saw it."""
    g = torch.Generator().manual_seed(12)
    out = torch.randn(8, 4, 32, generator=g, dtype=torch.float64)
    ref = out[acc.reference_rows(8)].clone()
    out[7, 2, 5] += 1.0
    result = acc.compare(out.float(), ref, "float32")
    assert not result.ok and "sequence 7, token 2, channel 5" in result.worst


def test_accuracy_non_finite_output_is_inaccurate() -> None:
    g = torch.Generator().manual_seed(13)
    out = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    ref = out.clone()
    out[0, 1, 3] = float("nan")
    result = acc.compare(out, ref, "float64")
    assert not result.ok and result.nonfinite == 1 and "non-finite" in result.describe()


def test_accuracy_passes_rounding_of_the_dtype() -> None:
    g = torch.Generator().manual_seed(14)
    ref = torch.randn(2, 16, 64, generator=g, dtype=torch.float64)
    for dtype, name in ((torch.float32, "float32"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        result = acc.compare(ref.to(dtype), ref, name)
        assert result.ok, (name, result)
        assert 0 < result.rel_err <= acc.REL_TOLERANCE[name]


def test_runner_marks_a_backend_wrong_in_the_last_sequence_inaccurate() -> None:
    """End to end: a backend whose core corrupts the last sequence's last query is caught."""

    def corrupt_last(q, k, v, scale, causal):
        from mlabench.variants.attention import eager_attention

        o = eager_attention(q, k, v, scale, causal)
        o[-1, -1] = -o[-1, -1]
        return o

    @register_backend("test-corrupt-last", description="test only", modes=("decode", "prefill"))
    def prepare(module, case, inputs):
        return Prepared(fn=lambda: module(inputs.x, inputs.start_pos, corrupt_last))

    try:
        row = run_case(make_case("gqa", "test-corrupt-last", batch=4), RunContext(CPU, timing=FAST)).row
    finally:
        del BACKENDS["test-corrupt-last"]
    assert row["status"] == "inaccurate", row
    assert "sequence 3" in row["error"]


@pytest.mark.parametrize(("variant", "mode", "seed"), [("mha", "decode", 1), ("gqa", "prefill", 0),
                                                  ("mla-latent", "decode", 0)])
def test_float64_row_summed_in_another_order_is_ok(variant: str, mode: str, seed: int) -> None:
    """SDPA sums in another order than the eager reference: a float64 row differs from it by a
    few units of rounding (rel_err ~1e-15) and is `ok`, its cosine difference resolved far below
    float64's eps rather than read as 0 or eps off `1 - ratio` (these seeds read eps = 2.2e-16,
    past the tolerance, and were `inaccurate`)."""
    row = run_case(make_case(variant, "sdpa", mode, batch=2, seq_len=64, shape=TINY_FP64),
                   RunContext(CPU, timing=FAST, seed=seed)).row
    assert row["dtype"] == "float64" and row["status"] == "ok", row
    assert 0 < row["rel_err"] < 1e3 * torch.finfo(torch.float64).eps
    assert 0 < row["cos_diff"] < 1e-26  # ~ rel_err^2: no floor at eps


def test_float64_cosine_difference_is_half_the_squared_relative_error() -> None:
    """A float64 output off by 1e-13 relative: its cosine difference is ~ (norm-wise relative
    error)^2 / 2 ~ 5e-27, which `1 - 2<o, r> / (|o|^2 + |r|^2)` in float64 reads as 0 or 1.1e-16."""
    g = torch.Generator().manual_seed(16)
    for trial in range(8):
        ref = torch.randn(2, 16, 512, generator=g, dtype=torch.float64)
        out = ref * (1 + 1e-13 * torch.randn(ref.shape, generator=g, dtype=torch.float64))
        rel_norm = float((out - ref).norm() / ref.norm())
        result = acc.compare(out, ref, "float64", rows=[0, 1])
        assert result.cos_diff == pytest.approx(rel_norm**2 / 2, rel=1e-6, abs=0), trial
        assert result.ok, (trial, result)


def test_float64_output_wrong_by_1e6_relative_is_inaccurate() -> None:
    """End to end: a float64 backend whose every output element is off by 1e-6 relative (far
    inside float32's tolerance, ~1e10 units of float64 rounding) is `inaccurate`, on both measures."""

    @register_backend("test-off-1e-6", description="test only: eager, off by 1e-6", modes=("decode",))
    def prepare(module, case, inputs):
        g = torch.Generator().manual_seed(17)

        def fn():
            out = module(inputs.x, inputs.start_pos)
            return out * (1 + 1e-6 * torch.randn(out.shape, generator=g, dtype=out.dtype))

        return Prepared(fn=fn)

    try:
        row = run_case(make_case("mla-absorbed", "test-off-1e-6", shape=TINY_FP64), RunContext(CPU, timing=FAST)).row
    finally:
        del BACKENDS["test-off-1e-6"]
    assert row["dtype"] == "float64" and row["status"] == "inaccurate", row
    assert row["rel_err"] > acc.REL_TOLERANCE["float64"] and row["cos_diff"] > acc.COS_TOLERANCE["float64"]


# --- memory and parameters -----------------------------------------------------------------
class CountAllocations(TorchDispatchMode):
    """Bytes of every tensor created by a factory op (what an allocator would hand out)."""

    FACTORIES = {"empty", "zeros", "ones", "full", "empty_strided", "randn", "rand", "arange"}

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in self.FACTORIES and isinstance(out, torch.Tensor):
            self.nbytes += out.nbytes
        return out


@pytest.mark.parametrize("mode", ["decode", "prefill"])
def test_mla_latent_transient_elements_are_what_its_step_holds(mode: str) -> None:
    """mla-latent re-expands its whole cache every call. What the CPU pre-flight adds for that is
    what `core_inputs` hands the core beyond the cache: kv_b_proj's output (B, T, H*(d_n+d_v)),
    of which V and K's no-RoPE half are views, and K with the RoPE key, (B, T, H, d_n+d_r)."""
    b, t = 2, 40
    q_len = t if mode == "prefill" else 1
    module = build_variant("mla-latent", TINY, CPU, torch.float32)
    sh = module.shape
    module.allocate_cache(b, t)
    module.fill_cache_random(t - q_len, seed=1)
    x = torch.randn(b, q_len, sh.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, k, v, _, _ = module.core_inputs(x, t - q_len)
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in (k, v)}
    h, d_n, d_v, d_r = sh.num_heads, sh.head_dim, sh.value_dim, sh.rope_head_dim
    by_hand = {b * t * h * (d_n + d_v) * 4, b * t * h * (d_n + d_r) * 4}  # kv_b_proj's output, K
    assert set(storages.values()) == by_hand and len(storages) == 2
    step = prefill_step(b, t) if mode == "prefill" else decode_step(b, t, 1)
    assert variant_class("mla-latent").transient_elements(sh, step) * 4 == sum(storages.values())


@pytest.mark.parametrize("variant", variant_names())
def test_cache_allocation_holds_the_cache_alone(variant: str) -> None:
    """What the runner measures around allocate_cache is the cache tensors, nothing else (RoPE
    tables were +25% on llama-3-8b, +44% on DeepSeek-V3 at batch 1)."""
    module = build_variant(variant, TINY, CPU, torch.float32)
    module.prepare_length(40)
    with CountAllocations() as counter:
        module.allocate_cache(1, 40)
    assert counter.nbytes == module.cache_nbytes() == analytic.kv_cache_bytes(variant, TINY.replace(dtype="float32"),
                                                                               1, 40)


@pytest.mark.parametrize("variant", variant_names())
def test_params_column_counts_the_module_and_the_formula_agrees(variant: str) -> None:
    case = make_case(variant, mode="prefill" if variant == "linformer" else "decode")
    row = run_case(case, RunContext(CPU, timing=FAST, accuracy=False)).row
    assert row["status"] == "ok", row
    module = build_variant(variant, case.shape, CPU, torch.float32)
    module.prepare_length(case.seq_len)
    counted = sum(p.numel() for p in module.parameters())
    assert row["params"] == counted == analytic.param_count(variant, case.shape, seq_len=case.seq_len)


def test_params_empty_when_no_module_was_built() -> None:
    """A skipped case never built its module: no formula stands in for a count."""
    row = run_case(make_case("mla-absorbed", "flashmla"), RunContext(CPU, timing=FAST)).row
    assert row["status"] in ("skipped", "unsupported")
    assert row.get("params") is None


@pytest.mark.parametrize(("variant", "kv_heads"), [
    ("mha", 8), ("gqa", 2), ("mqa", 1), ("mla-expanded", 8), ("mla-latent", 1), ("mla-absorbed", 1),
    ("lowrank-kv", 8), ("linformer", 8),
])
def test_num_kv_heads_records_what_the_variant_uses(variant: str, kv_heads: int) -> None:
    assert TINY.num_heads == 8 and TINY.num_kv_heads == 2
    assert make_case(variant).key["num_kv_heads"] == kv_heads


# --- FLOPs and bytes, hand-counted -----------------------------------------------------------
def test_gqa_decode_flops_and_bytes_by_hand() -> None:
    """d=8, H=2, G=1, D=4, one sequence, P=3 cached + 1 new token, fp32."""
    sh = shape_for_variant("gqa", from_name("tiny").replace(hidden_size=8, num_heads=2, num_kv_heads=1,
                                                            head_dim=4, dtype="float32"))
    step = decode_step(1, 4, 1)
    # Projections per token: q 8*8, k 8*4, v 8*4, o 8*8 multiply-adds = 192, x2 FLOPs.
    proj = 2 * (8 * 8 + 8 * 4 + 8 * 4 + 8 * 8)
    # Core: each of 2 heads, 4 keys: scores 4*4 MACs and weighted sum 4*4 MACs.
    core = 2 * 2 * (4 * 4 + 4 * 4)
    assert analytic.flops("gqa", sh, step) == proj + core
    weights = (8 * 8 + 8 * 4 + 8 * 4 + 8 * 8) * 4
    activations = 1 * (2 * 8 + 8 + 8) * 4  # x, y, Q (H*D), O (H*D)
    cache = (4 + 1) * (2 * 1 * 4) * 4  # read 4 tokens, write 1, K and V of one group
    assert analytic.bytes_moved("gqa", sh, step) == weights + activations + cache


def test_mla_absorbed_decode_flops_by_hand() -> None:
    """H=2, d_c=4, d_r=2, d_n=3, d_v=3, no query compression, d=8, T=5 keys, one token."""
    sh = shape_for_variant("mla-absorbed", from_name("tiny").replace(
        hidden_size=8, num_heads=2, head_dim=3, rope_head_dim=2, v_head_dim=3, q_lora_rank=0, kv_lora_rank=4,
        dtype="float32"))
    step = decode_step(1, 5, 1)
    # Core: per head and key, q'.k' over d_c + d_r = 6 and p*v over d_c = 4 MACs.
    core = 2 * 2 * 5 * (6 + 4)
    # Projections: q 8 -> 2*5, kv_a 8 -> 6, W_UK 2*3*4, W_UV 2*4*3, o 6 -> 8.
    proj = 2 * (8 * 10 + 8 * 6 + 2 * 3 * 4 + 2 * 4 * 3 + 6 * 8)
    assert analytic.core_flops("mla-absorbed", sh, step) == core
    assert analytic.flops("mla-absorbed", sh, step) == core + proj


def test_linformer_flops_count_every_head_whatever_num_kv_heads_says() -> None:
    """The module projects K and V for all H heads; the formula once used the preset's G."""
    base = from_name("tiny").replace(dtype="float32")
    step = prefill_step(1, 16)
    with_g = analytic.flops("linformer", base.replace(num_kv_heads=2), step)
    without = analytic.flops("linformer", base.replace(num_kv_heads=None), step)
    assert with_g == without
    h, dh, d = base.num_heads, base.head_dim, base.hidden_size
    assert analytic.projection_flops("linformer", base.replace(num_kv_heads=2), step) == 16 * 2 * 4 * d * h * dh


# --- roofline and quantiles -------------------------------------------------------------------
def test_roofline_is_the_share_of_the_physical_floor() -> None:
    peaks = Peaks(bytes_per_s=1e12, flops_per_s={"bfloat16": 1e15})
    # 1 GB at 1 TB/s is 1 ms; 1e12 FLOPs at 1 PFLOP/s is 1 ms: the floor is 1 ms either way.
    assert roofline_pct(1e12, 1e9, 2.0, peaks, "bfloat16") == pytest.approx(50.0)
    assert roofline_pct(1e9, 1e9, 1.0, peaks, "bfloat16") == pytest.approx(100.0)  # memory-bound
    assert roofline_pct(1e9, 1e9, 1.0, peaks, "float32") is None  # no peak for that dtype


def test_quantiles_and_unstable_flag() -> None:
    case = make_case("gqa")
    row = {"flops": 1, "bytes": 1}
    samples = [float(v) for v in range(1, 21)]  # 1..20 ms
    summarize_samples(case, RunContext(CPU), row, samples)
    assert row["latency_ms"] == 10.5
    assert row["latency_ms_p10"] == pytest.approx(2.9) and row["latency_ms_p90"] == pytest.approx(18.1)
    assert row["latency_ms_iqr"] == pytest.approx(15.25 - 5.75)  # inclusive quartiles of 1..20
    assert row["n_samples"] == 20 and row["unstable"] == 1
    steady = {"flops": 1, "bytes": 1}
    summarize_samples(case, RunContext(CPU), steady, [1.0, 1.01, 0.99, 1.02, 1.0])
    assert steady["unstable"] == 0


def test_cpu_rows_record_one_thread_by_default() -> None:
    row = run_case(make_case("gqa"), RunContext(CPU, timing=FAST, accuracy=False)).row
    assert row["threads"] == 1


def test_accuracy_cosine_catches_an_error_spread_over_every_element() -> None:
    """3% noise on every element stays under bf16's element tolerance, but no bf16 kernel is
    that wrong everywhere: the cosine difference flags it."""
    g = torch.Generator().manual_seed(15)
    ref = torch.randn(2, 32, 64, generator=g, dtype=torch.float64)
    out = ref + 0.03 * ref.abs() * torch.sign(torch.randn(ref.shape, generator=g, dtype=torch.float64))
    result = acc.compare(out, ref, "bfloat16")
    assert result.rel_err <= acc.REL_TOLERANCE["bfloat16"]
    assert not result.ok and result.cos_diff > acc.COS_TOLERANCE["bfloat16"]


def test_params_come_from_the_module_not_the_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analytic, "param_count", lambda *a, **k: -1)
    row = run_case(make_case("mla-absorbed"), RunContext(CPU, timing=FAST, accuracy=False)).row
    module = build_variant("mla-absorbed", TINY, CPU, torch.float32)
    assert row["params"] == sum(p.numel() for p in module.parameters()) > 0


@pytest.mark.parametrize("variant", ["gqa", "mla-absorbed", "linformer"])
def test_runner_measures_the_cache_allocation_alone(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The allocator column of a row is what the allocation the runner wraps creates; with a
    counting stand-in for the CUDA allocator it must be the cache's bytes exactly."""
    from mlabench import runner
    from mlabench.measure.memory import AllocationDelta

    def counting(allocate, device, nvml):
        with CountAllocations() as counter:
            allocate()
        return AllocationDelta(counter.nbytes, None)

    monkeypatch.setattr(runner, "measure_allocation", counting)
    case = make_case(variant, mode="prefill" if variant == "linformer" else "decode")
    row = run_case(case, RunContext(CPU, timing=FAST, accuracy=False)).row
    assert row["kv_cache_bytes_allocator"] == row["kv_cache_bytes_measured"] == row["kv_cache_bytes"]
