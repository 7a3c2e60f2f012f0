"""FP8 KV caches (`kv_dtype`): layouts and bytes, accuracy against float64, the fused kernel and adapters.

Every numerical check runs on fresh random inputs against a float64 reference: the stored
layouts against the values they encode, each variant's step against the float64 reference
of the unquantized cache (and of the dequantized one, which the step must match to the
compute dtype's tolerance), and the Triton kernel (under the interpreter on the CPU) against
float64 attention over the dequantized rows, with every byte past a sequence's end NaN.
Shapes are tiny so the whole file stays a few seconds of CPU.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
import torch

from mlabench import analytic, schema
from mlabench.config import AttentionShape, ShapeError, from_name
from mlabench.measure import accuracy as acc
from mlabench.step import decode_step
from mlabench.variants import VARIANT_CLASSES, build_variant
from mlabench.variants.kvquant import TILE, LatentFP8, PerTensorFP8, fp8_max, latent_row_bytes, torch_fp8
from tests.cli_run import run_cli

FP8 = ("fp8_e4m3", "fp8_e5m2")
MANTISSA = {"fp8_e4m3": 3, "fp8_e5m2": 2}
TINY = from_name("tiny")  # d_c = 16, d_r = 16: one partial 128-wide tile
B, T = 2, 24


def _module(variant: str, kv_dtype: str, start: int, seed: int = 0) -> Any:
    try:
        VARIANT_CLASSES[variant].normalize_shape(TINY.replace(kv_dtype=kv_dtype))
    except ShapeError as exc:
        if exc.field != "kv_dtype":
            raise
        pytest.skip(f"{variant} refuses an {kv_dtype} cache: {exc}")  # said by the variant, as a sweep drops it
    m = build_variant(variant, TINY.replace(kv_dtype=kv_dtype), "cpu", torch.float32, seed=seed)
    m.allocate_cache(B, T)
    if start:
        m.fill_cache_random(start, seed=seed + 7)
    return m


def _step(variant: str) -> tuple[int, int]:
    """(start, new tokens): a two-token decode, or linformer's prefill."""
    return (0, T) if not VARIANT_CLASSES[variant].supports_decode else (T - 2, 2)


# --- layouts and bytes -----------------------------------------------------------------------


@pytest.mark.parametrize("kv_dtype", ("",) + FP8)
@pytest.mark.parametrize("variant", list(VARIANT_CLASSES))
def test_analytic_bytes_equal_the_cache_tensors(variant: str, kv_dtype: str) -> None:
    m = _module(variant, kv_dtype, 0)
    assert analytic.kv_cache_bytes(variant, m.shape, B, T) == m.cache_nbytes()
    assert analytic.kv_cache_bytes(variant, m.shape, B, T, layers=3) == 3 * m.cache_nbytes()
    if kv_dtype:  # FP8 bytes per element: a quarter of fp32, plus the scales the layout states
        plain = analytic.kv_cache_bytes(variant, TINY, B, T)
        if variant == "dsa":  # its indexer key is FP8 in both: only the latent shrinks
            index_key = B * T * (m.shape.index_head_dim + 4)
            plain, fp8 = plain - index_key, m.cache_nbytes() - index_key
            assert plain // 4 < fp8 < plain // 2
            return
        assert plain // 4 < m.cache_nbytes() < plain // 2


def test_deepseek_latent_row_is_656_bytes() -> None:
    ds = from_name("deepseek-v3", kv_dtype="fp8_e4m3")
    for variant in ("mla-latent", "mla-absorbed"):
        assert analytic.kv_bytes_per_token(variant, ds) == 656 == 512 + 4 * 4 + 2 * 64
    assert analytic.kv_bytes_per_token("mla-absorbed", from_name("deepseek-v3")) == 1152
    assert analytic.kv_bytes_per_token("mla-expanded", ds) == 128 * (192 + 128)  # per-tensor: one byte each
    assert VARIANT_CLASSES["mla-expanded"].kv_fixed_bytes(ds) == 8  # two fp32 scales per layer
    assert latent_row_bytes(16, 16) == 16 + 4 + 32  # a partial tile still has its scale


def _within_rounding(deq: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, kv_dtype: str) -> None:
    """|deq - x| within half an FP8 step: relative 2^-(m+1) in the normal range, else the subnormal step."""
    m = MANTISSA[kv_dtype]
    tiny = float(torch.finfo(torch_fp8(kv_dtype)).smallest_normal) * 2.0**-m
    bound = torch.maximum(x.abs() * 2.0 ** -(m + 1), scale * tiny / 2)
    assert ((deq - x).abs() <= bound * (1 + 1e-6)).all()


@pytest.mark.parametrize("kv_dtype", FP8)
def test_latent_rows_encode_values_within_one_rounding(kv_dtype: str) -> None:
    d_c, d_r = 2 * TILE + 12, 8  # two whole tiles and a partial one
    fmt = LatentFP8(kv_dtype, d_c, d_r)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, d_c + d_r, generator=gen, dtype=torch.float64) * torch.tensor([1e-3, 1.0, 40.0])[:, None,
                                                                                                        None]
    rows = torch.full((3, 5, latent_row_bytes(d_c, d_r)), 0xFF, dtype=torch.uint8)
    fmt.encode(x, rows)
    latent, scales, rope = fmt.parts(rows)
    assert torch.equal(torch.log2(scales).round(), torch.log2(scales))  # powers of two
    tiles = torch.nn.functional.pad(x[..., :d_c], (0, 3 * TILE - d_c)).unflatten(-1, (3, TILE)).abs().amax(-1)
    assert (tiles / scales <= fp8_max(kv_dtype)).all() and (tiles / scales > fp8_max(kv_dtype) / 2).all()
    assert torch.equal(rope, x[..., d_c:].to(torch.bfloat16))
    deq = fmt.decode(rows, torch.float64)
    scale_per_column = scales.repeat_interleave(TILE, -1)[..., :d_c]
    _within_rounding(deq[..., :d_c], x[..., :d_c], scale_per_column, kv_dtype)


def test_gla_latent_heads_are_tiled_on_their_own() -> None:
    """GLA's FP8 row is DeepSeek's layout per latent head: a head's tiles never reach into the next
    head, so each GPU under tensor parallelism holds whole tiles with their scales."""
    d_g, d_r = TILE + 40, 8  # each head: one whole tile and a partial one
    fmt = LatentFP8("fp8_e4m3", 2 * d_g, d_r, heads=2)
    assert fmt.row_bytes == latent_row_bytes(2 * d_g, d_r, 2) == 2 * d_g + 4 * 4 + 2 * d_r
    x = torch.randn(3, 2 * d_g + d_r, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:, d_g:2 * d_g] *= 1000.0  # the second head's values are far larger: its own scales
    rows = torch.empty(3, fmt.row_bytes, dtype=torch.uint8)
    fmt.encode(x, rows)
    _, scales, _ = fmt.parts(rows)  # (3, 4): head 0's two tiles, then head 1's
    heads = x[:, : 2 * d_g].unflatten(-1, (2, d_g))
    first_tiles = heads[..., :TILE].abs().amax(-1)  # (3, 2)
    assert torch.equal(scales[:, [0, 2]], first_tiles.new_tensor(2.0) ** torch.ceil(
        torch.log2(first_tiles / fp8_max("fp8_e4m3"))).float())
    assert (fmt.decode(rows, torch.float64) - x).abs().div(x.abs().clamp_min(1e-3)).max() < 2**-3
    xl = from_name("gla-xl").replace(kv_dtype="fp8_e4m3")  # h_c = 2, d_g = 256, d_r = 64
    assert analytic.kv_bytes_per_token("gla-absorbed", xl) == 512 + 4 * 4 + 2 * 64  # 656, as MLA's row
    assert analytic.kv_bytes_per_token_per_gpu("gla-absorbed", xl, 2) == 256 + 4 * 2 + 2 * 64  # one head's tiles
    m = build_variant("gla-absorbed", xl, "meta", torch.bfloat16, seed=0)
    m.allocate_cache(2, 64)
    assert m.cache_nbytes() == analytic.kv_cache_bytes("gla-absorbed", xl, 2, 64) == 2 * 64 * 656


def test_fused_cores_refuse_gla_fp8_rows() -> None:
    from mlabench.backends import StepInputs
    from mlabench.backends.triton_mla import TritonMLACore
    from mlabench.errors import UnsupportedError

    shape = VARIANT_CLASSES["gla-absorbed"].normalize_shape(TINY.replace(kv_dtype="fp8_e4m3"))
    m = build_variant("gla-absorbed", shape, "cpu", torch.float32, seed=1)
    m.allocate_cache(2, 8)
    with pytest.raises(UnsupportedError, match="one latent head .* not gla-absorbed's"):
        TritonMLACore(m, StepInputs(torch.zeros(2, 1, shape.hidden_size), 7), {})


@pytest.mark.parametrize("kv_dtype", FP8)
def test_per_tensor_scale_calibrates_once_and_saturates(kv_dtype: str) -> None:
    fmt = PerTensorFP8(kv_dtype)
    cache = fmt.allocate({"k": (2, 6, 3)}, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    fmt.store(cache, "k", (slice(None), slice(0, 3)), x)
    scale = cache["k_scale"].clone()
    _within_rounding(fmt.load(cache, "k", (slice(None), slice(0, 3)), torch.float64), x, scale, kv_dtype)
    big = x * 1e6  # far past the headroom: saturates at the largest finite value, never inf or NaN
    fmt.store(cache, "k", (slice(None), slice(3, 6)), big)
    assert torch.equal(cache["k_scale"], scale)  # static: set by the first data only
    back = fmt.load(cache, "k", (slice(None), slice(3, 6)), torch.float64)
    assert torch.isfinite(back).all() and back.abs().max() == fp8_max(kv_dtype) * scale


# --- the variants' steps -----------------------------------------------------------------------


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("variant", list(VARIANT_CLASSES))
def test_step_against_the_unquantized_float64_reference(variant: str, kv_dtype: str) -> None:
    start, s = _step(variant)
    x = torch.randn(B, s, TINY.hidden_size, generator=torch.Generator().manual_seed(3))
    m = _module(variant, kv_dtype, start)
    out = m(x, start)
    unquantized = acc.reference_output(m, x, start)
    dequantized = acc.reference_output(m, x, start, unquantized=False)
    if VARIANT_CLASSES[variant].supports_decode:  # linformer's seq projections are drawn per allocation
        plain = _module(variant, "", start)
        assert torch.equal(unquantized, acc.reference_output(plain, x, start))  # the same context, unquantized
    if VARIANT_CLASSES[variant].supports_decode:
        # The step computes exactly on what it stored: the compute dtype's tolerance against the dequantized
        # cache. (A prefill writes every row from float64 values in the reference, where one rounding may
        # land on the other side of an FP8 step: that case is left to the quant_err bound below.)
        assert acc.compare(out, dequantized, "float32").ok
    quant = acc.quant_error(dequantized, unquantized, B, "float32")
    result = acc.compare(out, unquantized, "float32", quant)
    # dsa's indexer key is FP8 in the model itself, so both references select the same top-k rows
    # and only the latent's quantization differs: the same bound as every other cache.
    assert 1e-3 < quant.rel_err < 0.5 and result.ok
    assert result.tolerance == pytest.approx(acc.FP8_SLACK * (quant.rel_err + acc.REL_TOLERANCE["float32"]))


@pytest.mark.parametrize("variant", ["gqa", "mla-absorbed"])
def test_a_wrongly_scaled_cache_is_inaccurate(variant: str) -> None:
    start, s = _step(variant)
    x = torch.randn(B, s, TINY.hidden_size, generator=torch.Generator().manual_seed(4))
    m = _module(variant, "fp8_e4m3", start)
    unquantized = acc.reference_output(m, x, start)
    quant = acc.quant_error(acc.reference_output(m, x, start, unquantized=False), unquantized, B, "float32")
    if variant == "gqa":
        m.cache_tensors()["k_cache_scale"].mul_(2)  # a kernel reading the wrong scale
    else:
        _, scales, _ = m.kv_store.parts(m.cache_tensors()["kv_cache"])
        scales[1, : start // 2].mul_(2)  # the last sequence's early tokens
    assert not acc.compare(m(x, start), unquantized, "float32", quant).ok


def test_kv_dtype_names_and_refusals() -> None:
    assert TINY.replace(kv_dtype="float8_e4m3fn").kv_dtype == "fp8_e4m3"
    assert TINY.replace(kv_dtype="auto").kv_dtype == "" and TINY.replace(kv_dtype="fp32").kv_dtype == ""
    for bad, needle in (("fp4", "unknown cache dtype"), ("bfloat16", "needs compute dtype bfloat16")):
        with pytest.raises(ShapeError, match=needle):
            TINY.replace(kv_dtype=bad)
    with pytest.raises(ShapeError, match="kv_lora_rank divisible by 4"):
        VARIANT_CLASSES["mla-absorbed"].normalize_shape(TINY.replace(kv_lora_rank=18, kv_dtype="fp8_e5m2"))


def test_case_key_and_old_runs() -> None:
    key = {c: "1" for c in schema.KEY_COLUMNS} | {"dtype": "bfloat16"}
    old = {c: v for c, v in key.items() if c != "kv_dtype"}
    # A run written before the column: its ids stay, and the compute dtype reads the same.
    assert schema.case_id(old) == schema.case_id({**key, "kv_dtype": "bfloat16"}) == schema.case_id(
        {**key, "kv_dtype": ""})
    assert schema.case_id({**key, "kv_dtype": "fp8_e4m3"}) != schema.case_id(old)


def test_old_results_read_as_their_dtype(tmp_path: Any) -> None:
    from mlabench.rundir import read_results

    row = {c: 1 for c in schema.KEY_COLUMNS if c != "kv_dtype"} | {
        "suite": "s", "model": "tiny", "variant": "gqa", "backend": "eager", "mode": "decode", "scope": "step",
        "dtype": "float32", "device": "cpu", "options": "", "status": "ok", "error": "", "latency_ms": 1.0,
        "case_id": ""}
    path = tmp_path / "results.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    df = read_results(path)
    assert df.loc[0, "kv_dtype"] == "float32"
    assert df.loc[0, "case_id"] == schema.case_id({**row, "case_id": None})


def test_stored_bytes_in_the_work_model() -> None:
    ds = from_name("deepseek-v3")
    fp8 = ds.replace(kv_dtype="fp8_e4m3")
    step = decode_step(4, 4096, 1)
    k_plain, k_fp8 = (analytic.kernel_bytes("mla-absorbed", sh, step) for sh in (ds, fp8))
    assert k_plain - k_fp8 == 4 * 4096 * (1152 - 656)  # the latent read at its stored width
    s_plain, s_fp8 = (analytic.bytes_moved("mla-absorbed", sh, step) for sh in (ds, fp8))
    assert s_plain - s_fp8 == 4 * (4096 + 1) * (1152 - 656)  # T tokens read, S written
    # mla-latent re-expands its cache in the compute dtype: only the stored latent shrinks.
    assert analytic.bytes_moved("mla-latent", ds, step) - analytic.bytes_moved("mla-latent", fp8, step) \
        == 4 * (4096 + 1) * (1152 - 656)


# --- the fused kernel and the library adapters ------------------------------------------------


@pytest.mark.parametrize(("kv_dtype", "dtype", "num_splits"), [
    ("fp8_e4m3", torch.float32, 3), ("fp8_e4m3", torch.bfloat16, 1),
    ("fp8_e5m2", torch.bfloat16, 3), ("fp8_e5m2", torch.float32, 1)])
def test_triton_kernel_reads_fp8_rows(kv_dtype: str, dtype: torch.dtype, num_splits: int) -> None:
    from mlabench.kernels.mla_decode import mla_decode, mla_decode_config, triton_unavailable_reason
    from mlabench.kernels.mla_decode_launch import auto_fp8_configs

    if triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("triton cannot run on the CPU here")
    b, s, h, dv, dr, t_max = 2, 2, 4, 32, 16, 48
    fmt = LatentFP8(kv_dtype, dv, dr)
    gen = torch.Generator().manual_seed(5)
    values = torch.randn(b, t_max, dv + dr, generator=gen) * 3
    rows = torch.full((b, t_max, latent_row_bytes(dv, dr)), 0xFF, dtype=torch.uint8)  # NaN in every part
    seqlens = torch.tensor([29, 45], dtype=torch.int32)
    for i, n in enumerate(seqlens.tolist()):
        fmt.encode(values[i, :n], rows[i, :n])
    q = torch.randn(b, s, h, dv + dr, generator=gen).to(dtype)
    scale = (dv + dr) ** -0.5
    if dtype == torch.bfloat16:  # the one configuration the sm_90a compile shows clean over FP8 rows
        cfg = mla_decode_config(q, rows, num_splits, kv_fp8=True)
        assert [(cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages)] == [
            (c.block_h, c.block_n, c.num_warps, c.num_stages) for c in auto_fp8_configs()]
    out = mla_decode(q, rows, seqlens, dv, scale, num_splits=num_splits, kv_dtype=kv_dtype)
    ref = torch.empty(b, s, h, dv, dtype=torch.float64)
    for i, n in enumerate(seqlens.tolist()):
        kv = fmt.decode(rows[i, :n], torch.float64)  # (n, D)
        scores = torch.einsum("shd,td->sht", q[i].double(), kv) * scale
        visible = torch.arange(n)[None, :] <= (n - s + torch.arange(s))[:, None]
        ref[i] = torch.softmax(scores.masked_fill(~visible[:, None, :], float("-inf")), -1) @ kv[:, :dv]
    tol = 1e-5 if dtype == torch.float32 else 2.5e-2
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs() / ref.abs().clamp_min(ref.pow(2).mean().sqrt())).max() < tol


def test_triton_backend_case_reports_quant_err() -> None:
    from mlabench.case import Case
    from mlabench.kernels.mla_decode import triton_unavailable_reason
    from mlabench.kernels.mla_decode_launch import auto_fp8_configs
    from mlabench.measure.timing import TimingSettings
    from mlabench.runner import RunContext, run_case

    if triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("triton cannot run on the CPU here")
    shape = VARIANT_CLASSES["mla-absorbed"].normalize_shape(TINY.replace(kv_dtype="fp8_e4m3"))
    case = Case("test", "tiny", "mla-absorbed", "triton", "decode", "cpu", 2, 20, 1, shape)
    timing = TimingSettings(budget_s=0.0, warmup_s=0.0, min_samples=1, max_samples=1)
    row = run_case(case, RunContext(torch.device("cpu"), timing=timing)).row
    assert row.status == "ok", row.error
    assert row.kv_dtype == "fp8_e4m3" and row.kv_cache_bytes == row.kv_cache_bytes_measured == 2 * 20 * 52
    assert row.quant_err > 1e-3 and row.rel_err == pytest.approx(row.quant_err, rel=1e-3)  # all of it is FP8's
    fp8 = auto_fp8_configs()[0]  # the FP8 launch, not the 16-bit one that spills over FP8 rows
    assert row.backend_detail.startswith(f"triton:block_h={fp8.block_h},block_n={fp8.block_n},"
                                         f"num_warps={fp8.num_warps},")


DS_TINY = AttentionShape(hidden_size=64, num_heads=4, head_dim=16, rope_head_dim=64, v_head_dim=16,
                         q_lora_rank=0, kv_lora_rank=512, dtype="bfloat16", name="ds-tiny")


def _ds_step(backend: str, kv_dtype: str) -> tuple[Any, Any, Any]:
    from mlabench.backends import StepInputs
    from mlabench.case import Case

    shape = VARIANT_CLASSES["mla-absorbed"].normalize_shape(DS_TINY.replace(kv_dtype=kv_dtype))
    m = build_variant("mla-absorbed", shape, "cpu", torch.bfloat16, seed=3)
    m.allocate_cache(2, 70)
    m.fill_cache_random(69, seed=4)
    x = torch.randn(2, 1, 64, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    return m, Case("test", "ds-tiny", "mla-absorbed", backend, "decode", "cpu", 2, 70, 1, shape), StepInputs(x, 69)


class FakeFlashMLAFP8:
    """flash_mla's decode API with `is_fp8_kvcache`, in float64 from the page pool's 656-byte rows."""

    __version__ = "stand-in"

    def get_mla_metadata(self, cache_seqlens: torch.Tensor, q_per_kv_head: int, kv_heads: int) -> tuple[str, str]:
        return "tile-metadata", "num-splits"

    def flash_mla_with_kvcache(self, q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                               cache_seqlens: torch.Tensor, head_dim_v: int, tile_scheduler_metadata: Any,
                               num_splits: Any, softmax_scale: float | None = None, causal: bool = False,
                               is_fp8_kvcache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        assert is_fp8_kvcache and k_cache.dtype == torch.float8_e4m3fn and k_cache.shape[1:] == (64, 1, 656)
        fmt = LatentFP8("fp8_e4m3", head_dim_v, 64)
        out = torch.empty(*q.shape[:3], head_dim_v, dtype=torch.float64)
        for i in range(q.shape[0]):
            n = int(cache_seqlens[i])
            rows = k_cache[block_table[i].long(), :, 0].flatten(0, 1)[:n].view(torch.uint8)
            kv = fmt.decode(rows, torch.float64)  # (n, 576)
            scores = torch.einsum("shd,td->sht", q[i].double(), kv) * softmax_scale
            out[i] = torch.softmax(scores, -1) @ kv[:, :head_dim_v]  # one new token sees every key
        return out.to(q.dtype), torch.zeros(1)


def test_flashmla_reads_its_fp8_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.backends import BACKENDS, flashmla

    monkeypatch.setattr(flashmla, "_load_library", lambda: (FakeFlashMLAFP8(), None))
    m, case, inputs = _ds_step("flashmla", "fp8_e4m3")
    prepared = BACKENDS["flashmla"].prepare(m, case, inputs)
    # The timed step does what FlashMLA does: it writes the step's rows and hands the kernel the
    # stored bytes; it never dequantizes the latent cache (only the stand-in kernel decodes rows).
    reads: list[str] = []

    def counted(method: str) -> Any:
        original = getattr(LatentFP8, method)

        def read(self: LatentFP8, *args: Any) -> Any:
            reads.append(method)
            return original(self, *args)
        return read

    with monkeypatch.context() as patch:
        for method in ("load", "from_stored"):  # the module's two ways of dequantizing its cache
            patch.setattr(LatentFP8, method, counted(method))
        out = prepared.fn()
    assert reads == []
    dequantized = acc.reference_output(m, inputs.x, inputs.start_pos, unquantized=False)
    assert acc.compare(out, dequantized, "bfloat16").ok


def test_adapters_without_an_fp8_reader_are_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.backends import BACKENDS, flashinfer, flashmla
    from mlabench.errors import UnsupportedError

    class NoFP8:
        def flash_mla_with_kvcache(self, q: Any, k_cache: Any, block_table: Any, cache_seqlens: Any,
                                   head_dim_v: Any, metadata: Any, num_splits: Any, softmax_scale: Any = None,
                                   causal: bool = False) -> None:
            raise AssertionError("not called")

    monkeypatch.setattr(flashmla, "_load_library", lambda: (NoFP8(), None))
    with pytest.raises(UnsupportedError, match="no FP8 KV cache"):
        BACKENDS["flashmla"].prepare(*_ds_step("flashmla", "fp8_e4m3"))
    monkeypatch.setattr(flashmla, "_load_library", lambda: (FakeFlashMLAFP8(), None))
    with pytest.raises(UnsupportedError, match="cannot read an fp8_e5m2 latent cache: it reads fp8_e4m3 only"):
        BACKENDS["flashmla"].prepare(*_ds_step("flashmla", "fp8_e5m2"))
    monkeypatch.setattr(flashinfer, "_load_library", lambda: (object(), None))
    with pytest.raises(UnsupportedError, match="flashinfer cannot read an fp8_e4m3 latent cache: .*per-token"):
        BACKENDS["flashinfer"].prepare(*_ds_step("flashinfer", "fp8_e4m3"))


# --- the command line ------------------------------------------------------------------------


def test_kv_command_prints_fp8_figures(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, _ = run_cli(["kv", "--kv-dtype", "fp8_e4m3", "--preset", "deepseek-v3"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "│ 656 B │ 128-tile │" in text
    assert "128-tile: per token: FP8 latent + one fp32 scale per 128 values, RoPE key in bf16" in text
    # The latent designs share one layout: GLA with one latent head is MLA's row, byte for byte.
    code, out, _ = run_cli(["kv", "--kv-dtype", "fp8_e4m3", "--preset", "deepseek-v3", "--set", "num_latent_heads=1",
                            "--variant", "mla-absorbed,gla-absorbed", "--json"], capsys)
    rows = json.loads(out)["variants"]
    assert [(r["bytes_per_token_per_layer"], r["layout"]) for r in rows] == [(656, "128-tile")] * 2
    code, out, _ = run_cli(["kv", "--kv-dtype", "fp8_e4m3", "--preset", "deepseek-v3", "--json"], capsys)
    doc = json.loads(out)
    by_name = {r["variant"]: r for r in doc["variants"]}
    assert doc["kv_dtype"] == "fp8_e4m3" and by_name["mla-absorbed"]["bytes_per_token_per_layer"] == 656
    assert by_name["mla-absorbed"]["batch_bytes"] == 656 * 61 * 32768
    assert by_name["mha"]["batch_bytes"] == 61 * (2 * 128 * 128 * 32768 + 8)


@pytest.mark.parametrize("args", [["kv", "--kv-dtype", "fp4"], ["kv", "--kv-dtype", "float32"],
                                  ["run", "--model", "tiny", "--variant", "gqa", "--set", "kv_dtype=int8"]])
def test_bad_kv_dtype_is_one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mlabench: error: ") and "kv_dtype" in lines[0]


def test_suite_axis_refuses_an_unknown_kv_dtype(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[[grid]]\nmodel = ["tiny"]\nvariant = ["gqa"]\nkv_dtype = ["auto", "fp9"]\n')
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--dry-run"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "unknown cache dtype 'fp9'" in err
    suite.write_text('name = "s"\n[[grid]]\nmodel = ["tiny"]\nvariant = ["gqa"]\nkv_dtype = ["auto", "fp8_e5m2"]\n')
    code, out, err = run_cli(["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu"], capsys)
    assert code == 0 and "2 cases" in (out + err)


def test_tradeoff_chart_marks_cache_kinds() -> None:
    from mlabench.report.tradeoff import cache_kind, tradeoff_chart

    base = {"suite": "s", "model": "tiny", "mode": "decode", "backend": "eager", "batch": 2, "seq_len": 64,
            "q_len": 1, "status": "ok", "dtype": "float32", "scope": "step", "options": ""}
    rows = [dict(base, variant=v, kv_dtype=k, kv_cache_bytes=b, latency_ms=ms, case_id=f"{v}{k}")
            for v, k, b, ms in (("gqa", "float32", 4096.0, 1.0), ("gqa", "fp8_e4m3", 1032.0, 1.5),
                                ("mla-absorbed", "fp8_e5m2", 520.0, 2.0))]
    df = pd.DataFrame(rows)
    assert cache_kind(df).tolist() == ["float32", "fp8_e4m3", "fp8_e5m2"]
    assert cache_kind(df.assign(cache_layout=["", "paged", ""])).tolist() == ["float32", "fp8_e4m3 paged", "fp8_e5m2"]
    fig = tradeoff_chart(df).figure
    symbols = {t.name: t.marker.symbol for t in fig.data if t.name.startswith("cache: ")}
    assert symbols == {"cache: float32": "circle", "cache: fp8_e4m3": "diamond", "cache: fp8_e5m2": "square"}
    assert math.isclose(fig.data[0].x[0], 4096 / 128)
