"""Timing scope "core": the variant's core inputs, every backend's core alone, its own FLOPs and
bytes, its float64 accuracy check, and scope as part of a case's identity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from cli_run import run_cli

from mlabench import analytic, schema
from mlabench.backends import BACKENDS, StepInputs
from mlabench.case import Case
from mlabench.config import from_name
from mlabench.errors import UnsupportedError
from mlabench.measure.scope import core_reference, scoped_call
from mlabench.runner import RunContext, run_case
from mlabench.step import decode_step, prefill_step
from mlabench.suites import Suite, expand
from mlabench.variants import build_variant, shape_for_variant, variant_names
from mlabench.variants.attention import eager_attention

CPU = torch.device("cpu")
TINY = from_name("tiny", dtype="float64")
VARIANTS = variant_names()
DECODING = [v for v in VARIANTS if v != "linformer"]


def _module(variant: str, batch: int = 2, seq_len: int = 24, dtype: torch.dtype = torch.float64):
    module = build_variant(variant, TINY, CPU, dtype, seed=3)
    module.allocate_cache(batch, seq_len)
    return module


@pytest.mark.parametrize("variant", VARIANTS)
def test_core_inputs_are_exactly_what_forward_hands_the_core(variant: str) -> None:
    module = _module(variant)
    start, s = (0, 24) if variant == "linformer" else (20, 4)
    if start:
        module.fill_cache_random(start, seed=5)
    x = torch.randn(2, s, TINY.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seen: list[tuple[torch.Tensor, ...]] = []

    def spy(q, k, v, scale, causal):  # type: ignore[no-untyped-def]
        seen.append((q.clone(), k.clone(), v.clone(), scale, causal))
        return module.native_core(q, k, v, scale, causal)

    y = module(x, start, spy)
    q, k, v, scale, causal = module.core_inputs(x, start)
    fq, fk, fv, fscale, fcausal = seen[0]
    assert torch.equal(q, fq) and torch.equal(k, fk) and torch.equal(v, fv)
    assert scale == fscale
    if isinstance(causal, torch.Tensor):  # dsa: the index mask, causality included
        assert variant == "dsa" and torch.equal(causal, fcausal)
    else:
        assert causal == fcausal and causal is (variant != "linformer")
    # core_output of the variant's eager core on those inputs is the step's output.
    assert torch.equal(module.core_output(module.native_core(q, k, v, scale, causal)), y)


def test_absorbed_core_inputs_are_views_of_the_latent_cache() -> None:
    module = _module("mla-absorbed")
    module.fill_cache_random(20, seed=5)
    x = torch.randn(2, 1, TINY.hidden_size, dtype=torch.float64)
    q, k, v, _, _ = module.core_inputs(x, 20)
    cache = module.cache_tensors()["kv_cache"]
    sh = module.shape
    assert q.shape == (2, 1, sh.num_heads, sh.kv_lora_rank + sh.rope_head_dim)
    assert k.shape == (2, 21, 1, sh.kv_lora_rank + sh.rope_head_dim) and v.shape[-1] == sh.kv_lora_rank
    assert k.untyped_storage().data_ptr() == cache.untyped_storage().data_ptr()
    assert v.data_ptr() == k.data_ptr()  # V is K's prefix, never a copy


@pytest.mark.parametrize("variant", VARIANTS)
def test_kernel_figures_follow_the_core_inputs(variant: str) -> None:
    """kernel_bytes counts exactly the K, V (latent once), Q and O tensors core_inputs produces."""
    if variant in ("tpa-factorized", "dsa"):
        pytest.skip("its core is not dense attention over its inputs: tests/test_tpa_dsa.py checks its figures")
    start, s = (0, 24) if variant == "linformer" else (20, 4)
    module = _module(variant)
    q, k, v, _, _ = module.core_inputs(torch.zeros(2, s, TINY.hidden_size, dtype=torch.float64), start)
    step = prefill_step(2, 24) if variant == "linformer" else decode_step(2, 24, 4)
    sh = shape_for_variant(variant, TINY)
    out_width = q.shape[2] * v.shape[-1]
    kv = k.numel() if variant == "mla-absorbed" else k.numel() + v.numel()
    if variant == "gla-absorbed":  # the latent once, as a fused kernel reads it (the eager K is built from it)
        kv = v.shape[0] * v.shape[1] * (sh.kv_lora_rank + sh.rope_head_dim)
    assert analytic.kernel_bytes(variant, sh, step) == (kv + q.numel() + 2 * s * out_width) * 8
    # FLOPs: 2 per multiply-add of QK^T and PV over the pairs the mask lets through.
    pairs = 2 * 24 * sh.kv_lora_rank if variant == "linformer" else step.attended_pairs * 2
    per_pair = 2 * q.shape[2] * (q.shape[-1] + v.shape[-1])
    assert analytic.kernel_flops(variant, sh, step) == pairs * per_pair
    # Core scope is a strict part of the step.
    assert analytic.kernel_flops(variant, sh, step) <= analytic.flops(variant, sh, step)


def test_scoped_figures_pick_by_scope() -> None:
    sh, step = from_name("deepseek-v3"), decode_step(32, 4096, 1)
    assert analytic.scoped_bytes("mla-absorbed", sh, step, "core") == analytic.kernel_bytes("mla-absorbed", sh, step)
    assert analytic.scoped_bytes("mla-absorbed", sh, step, "step") == analytic.bytes_moved("mla-absorbed", sh, step)
    # At batch 32 x 4k the cache dominates: core bytes are cache + Q + O only.
    cache = 32 * 4096 * 576 * 2
    assert analytic.kernel_bytes("mla-absorbed", sh, step) == cache + 32 * 128 * (576 + 512) * 2


def _case(backend: str, variant: str = "mla-absorbed", scope: str = "core", **options: object) -> Case:
    suite = Suite("t", "", "", ({"model": ["tiny"], "variant": [variant], "backend": [backend], "mode": ["decode"],
                                 "batch": [2], "seq_len": [24], "q_len": [1], "scope": [scope]},),
                  options=dict(options))
    return expand(suite, "cpu", {b: s.variants for b, s in BACKENDS.items()}).cases[0]


@pytest.mark.parametrize("backend", ["eager", "sdpa", "compiled", "triton"])
def test_each_backend_core_alone_matches_the_float64_core(backend: str) -> None:
    case = _case(backend)
    module = build_variant("mla-absorbed", case.shape, CPU, torch.float32, seed=0)
    module.allocate_cache(2, 24)
    module.fill_cache_random(23, seed=1)
    x = torch.randn(2, 1, case.shape.hidden_size, generator=torch.Generator().manual_seed(2))
    prepared = BACKENDS[backend].prepare(module, case, StepInputs(x, 23))
    assert prepared.core is not None
    call = scoped_call(case, module, prepared, StepInputs(x, 23))
    out = call.fn()
    ref = call.reference()
    assert ref.dtype == torch.float64 and out.shape == (2, 1, case.shape.num_heads, case.shape.kv_lora_rank)
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-4, rel


def test_core_reference_is_float64_eager_on_the_first_and_last_sequences() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 4, 8, generator=g) for n in (2, 9, 9))
    ref = core_reference(q, k, v, 0.3, True)
    assert ref.shape[0] == 2 and ref.dtype == torch.float64
    rows = [0, 2]
    assert torch.allclose(ref, eager_attention(q[rows].double(), k[rows].double(), v[rows].double(), 0.3, True))


def test_a_backend_without_a_core_is_unsupported_in_core_scope() -> None:
    case = _case("eager")
    module = _module("mla-absorbed", dtype=torch.float32)
    prepared = BACKENDS["eager"].prepare(module, case, StepInputs(torch.zeros(2, 1, TINY.hidden_size), 23))
    prepared = type(prepared)(fn=prepared.fn)  # no core
    with pytest.raises(UnsupportedError, match="no attention core"):
        scoped_call(case, module, prepared, StepInputs(torch.zeros(2, 1, TINY.hidden_size), 23))


@pytest.mark.parametrize("variant", DECODING)
def test_run_case_core_scope_row(variant: str) -> None:
    case = _case("eager", variant=variant)
    from mlabench.measure.timing import TimingSettings

    ctx = RunContext(device=CPU, timing=TimingSettings(budget_s=0.002, warmup_s=0.0, min_samples=2))
    row = run_case(case, ctx).row
    assert row["status"] == "ok", row.get("error")
    assert row["scope"] == "core"
    assert row["flops"] == analytic.kernel_flops(variant, case.shape, case.step)
    assert row["bytes"] == analytic.kernel_bytes(variant, case.shape, case.step)
    assert row["rel_err"] is not None and row["rel_err"] < 1e-4
    assert row["sample_calls"] >= 1 and row["timer"].startswith("cpu-blocked")


def test_scope_is_part_of_the_key() -> None:
    step, core = _case("eager", scope="step"), _case("eager", scope="core")
    assert "scope" in schema.KEY_COLUMNS and step.key["scope"] == "step" and core.key["scope"] == "core"
    assert step.case_id != core.case_id
    assert list(step.key) == list(schema.KEY_COLUMNS)
    assert core.label().endswith("core")


def test_scope_axis_is_validated() -> None:
    from mlabench.errors import UsageError

    with pytest.raises(UsageError, match="scope 'kernel'"):
        _case("eager", scope="kernel")


def test_old_results_without_scope_load_as_step(tmp_path: Path) -> None:
    from mlabench.rundir import read_results

    row = {c: "" for c in schema.COLUMNS if c != "scope"}
    row.update(suite="s", model="tiny", variant="mha", backend="eager", mode="decode", dtype="float32", device="cpu",
               batch="1", seq_len="8", q_len="1", num_heads="8", num_kv_heads="8", head_dim="32", q_lora_rank="0",
               kv_lora_rank="0", rope_head_dim="0", v_head_dim="32", status="ok", latency_ms="1.0")
    path = tmp_path / "results.csv"
    path.write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
    df = read_results(path)
    assert list(df["scope"]) == ["step"]


def test_sweep_scope_option_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[settings]\nbudget_s = 0.002\nwarmup_s = 0.0\nmin_samples = 2\nthreads = 1\n'
                     '[[grid]]\nmodel = "tiny"\nvariant = "mla-absorbed"\nbackend = "eager"\nseq_len = 16\n')
    out = tmp_path / "run"
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--out", str(out), "--scope", "step,core",
                            "--no-probe", "--no-report"], capsys)
    assert code == 0, err
    from mlabench.rundir import case_labels, load_run

    df = load_run(out).results
    assert sorted(df["scope"]) == ["core", "step"]
    labels = sorted(case_labels(df))
    assert labels == ["mla-absorbed:eager scope=core", "mla-absorbed:eager scope=step"]
    core, step = (df[df["scope"] == s].iloc[0] for s in ("core", "step"))
    assert core["bytes"] < step["bytes"] and core["flops"] < step["flops"]
    assert math.isfinite(core["latency_ms"])
