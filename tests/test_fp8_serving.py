"""FP8 KV caches on ragged batches and paged caches: every combination's result or refusal.

An FP8 cache stores the same bytes per token whatever the layout, so a ragged and/or paged
FP8 case must compute exactly what each of its sequences computes alone on a contiguous FP8
cache holding that sequence's stored rows (float64 compute: the only rounding is FP8's, and
it is the same bytes on both sides). The Triton kernel reads FP8 rows through a block table;
FlashMLA reads its 656-byte rows from the case's own 64-token pages; FlashInfer has no FP8
reader in any layout. Shapes are tiny.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from cli_run import run_cli

from mlabench import analytic
from mlabench.config import PRESETS
from mlabench.errors import UnsupportedError
from mlabench.measure import accuracy as acc
from mlabench.suites import expand, load_suite
from mlabench.variants import VARIANT_CLASSES, build_variant
from mlabench.variants.kvquant import LatentFP8, latent_row_bytes

TINY = PRESETS["tiny"]
DECODING = [name for name, cls in VARIANT_CLASSES.items()
            if cls.supports_decode and not cls.no_serving_layouts(cls.normalize_shape(TINY))]
LENGTHS = (5, 13, 9)  # tokens after the step
Q_LEN = 2
LAYOUTS = [((5, 13, 9), 0), (None, 8), ((5, 13, 9), 8)]  # ragged contiguous, uniform paged, ragged paged
LAYOUT_IDS = ["ragged", "paged8", "ragged-paged8"]


def _fp8_module(variant: str, dtype: torch.dtype, lengths: tuple[int, ...] | None, page_size: int) -> Any:
    shape = VARIANT_CLASSES[variant].normalize_shape(TINY.replace(kv_dtype="fp8_e4m3"))
    m = build_variant(variant, shape, "cpu", dtype, seed=3)
    m.allocate_cache(len(LENGTHS), max(LENGTHS), lengths=lengths, page_size=page_size, shuffle_seed=5)
    m.fill_cache_random(max(LENGTHS) - Q_LEN, seed=11)
    return m


def _stored(module: Any, name: str, b: int, tokens: int) -> torch.Tensor:
    """Sequence b's first `tokens` stored rows (FP8 or byte rows) in order, whatever the layout."""
    return module.cache_map.gather(module.cache_tensors()[name], [b])[0, :tokens]


@pytest.mark.parametrize(("lengths", "page_size"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", DECODING)
def test_fp8_step_equals_each_sequence_alone_on_a_contiguous_fp8_cache(
        variant: str, lengths: tuple[int, ...] | None, page_size: int) -> None:
    m = _fp8_module(variant, torch.float64, lengths, page_size)
    held = lengths or (max(LENGTHS),) * len(LENGTHS)
    x = torch.randn(len(LENGTHS), Q_LEN, TINY.hidden_size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(7))
    out = m(x, max(LENGTHS) - Q_LEN)
    assert torch.isfinite(out).all()
    logical = [name for name in m.cache_tensors() if not name.endswith("_scale")]
    for b, n in enumerate(held):
        alone = copy.deepcopy(m)
        alone.allocate_cache(1, n)  # contiguous, uniform: main's FP8 path
        for name in logical:
            alone.cache_tensors()[name][0, : n - Q_LEN] = _stored(m, name, b, n - Q_LEN)
            if f"{name}_scale" in m.cache_tensors():  # per-tensor FP8: the same static scale
                alone.cache_tensors()[f"{name}_scale"].copy_(m.cache_tensors()[f"{name}_scale"])
                alone.kv_store.calibrated.add(name)
        expected = alone(x[b : b + 1], n - Q_LEN)
        torch.testing.assert_close(out[b : b + 1], expected, rtol=1e-10, atol=1e-10,
                                   msg=f"{variant} sequence {b} of {n} tokens")
        for name in logical:  # the step's new rows went to sequence b's own slots, the same bytes
            assert torch.equal(_stored(m, name, b, n).view(torch.uint8),
                               alone.cache_tensors()[name][0, :n].view(torch.uint8))


@pytest.mark.parametrize(("lengths", "page_size"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", ["gqa", "mla-absorbed"])
def test_fp8_references_and_quant_err(variant: str, lengths: tuple[int, ...] | None, page_size: int) -> None:
    """The runner's references: on the dequantized cache the step is exact; against the values
    before quantization it differs by FP8's error, which quant_err states."""
    m = _fp8_module(variant, torch.float32, lengths, page_size)
    start = max(LENGTHS) - Q_LEN
    x = torch.randn(len(LENGTHS), Q_LEN, TINY.hidden_size, generator=torch.Generator().manual_seed(9))
    out = m(x, start)
    unquantized = acc.reference_output(m, x, start)
    dequantized = acc.reference_output(m, x, start, unquantized=False)
    assert acc.compare(out, dequantized, "float32").ok
    quant = acc.quant_error(dequantized, unquantized, len(LENGTHS), "float32")
    assert 1e-3 < quant.rel_err < 0.5 and acc.compare(out, unquantized, "float32", quant).ok
    # The unquantized reference is the same case's compute-dtype cache: the contexts agree.
    plain = build_variant(variant, VARIANT_CLASSES[variant].normalize_shape(TINY), "cpu", torch.float32, seed=3)
    plain.allocate_cache(len(LENGTHS), max(LENGTHS), lengths=lengths, page_size=page_size, shuffle_seed=5)
    plain.fill_cache_random(start, seed=11)
    torch.testing.assert_close(unquantized, acc.reference_output(plain, x, start), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", DECODING)
def test_fp8_layout_bytes_equal_the_cache_tensors(variant: str) -> None:
    shape = VARIANT_CLASSES[variant].normalize_shape(TINY.replace(kv_dtype="fp8_e4m3"))
    for lengths in (None, LENGTHS, (1, 16, 17)):
        t_max, batch = (17, 3) if lengths is None else (max(lengths), len(lengths))
        for page in (0, 8, 16):
            m = build_variant(variant, shape, "cpu", torch.float32, seed=0)
            m.allocate_cache(batch, t_max, lengths=lengths, page_size=page)
            want = analytic.layout_kv_cache_bytes(variant, shape, batch, t_max, lengths, page)
            assert m.cache_nbytes() == want, (lengths, page)
    plain = analytic.layout_kv_cache_bytes(variant, TINY, 3, 17, LENGTHS, 8)
    assert plain // 4 < analytic.layout_kv_cache_bytes(variant, shape, 3, 17, LENGTHS, 8) < plain // 2


# --- the fused kernel and the library adapters ---------------------------------------------------
def test_triton_kernel_reads_fp8_rows_through_a_block_table() -> None:
    from mlabench.kernels.mla_decode import mla_decode, triton_unavailable_reason

    if triton_unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip("triton cannot run on the CPU here")
    b, s, h, dv, dr, page = 2, 2, 4, 32, 16, 8
    fmt = LatentFP8("fp8_e4m3", dv, dr)
    gen = torch.Generator().manual_seed(5)
    seqlens = torch.tensor([21, 11], dtype=torch.int32)
    table = torch.tensor([[4, 0, 5], [2, 1, 3]], dtype=torch.int32)  # shuffled pages; 3 x 8 >= 21
    pool = torch.full((6, page, latent_row_bytes(dv, dr)), 0xFF, dtype=torch.uint8)  # NaN wherever unread
    values = torch.randn(b, 24, dv + dr, generator=gen) * 3
    for i, n in enumerate(seqlens.tolist()):
        rows = torch.empty(n, pool.shape[-1], dtype=torch.uint8)
        fmt.encode(values[i, :n], rows)
        pos = torch.arange(n)
        pool[table[i].long()[pos // page], pos % page] = rows
    q = torch.randn(b, s, h, dv + dr, generator=gen)
    scale = (dv + dr) ** -0.5
    out = mla_decode(q, pool, seqlens, dv, scale, num_splits=2, kv_dtype="fp8_e4m3", block_table=table)
    ref = torch.empty(b, s, h, dv, dtype=torch.float64)
    for i, n in enumerate(seqlens.tolist()):
        kv = fmt.decode(pool[table[i].long()].flatten(0, 1)[:n], torch.float64)  # (n, D) in page order
        scores = torch.einsum("shd,td->sht", q[i].double(), kv) * scale
        visible = torch.arange(n)[None, :] <= (n - s + torch.arange(s))[:, None]
        ref[i] = torch.softmax(scores.masked_fill(~visible[:, None, :], float("-inf")), -1) @ kv[:, :dv]
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs() / ref.abs().clamp_min(ref.pow(2).mean().sqrt())).max() < 1e-5


def _ds_paged_step(backend: str, kv_dtype: str, page_size: int, lengths: tuple[int, ...]) -> tuple[Any, Any, Any]:
    from test_fp8_kv import DS_TINY

    from mlabench.backends import StepInputs
    from mlabench.case import Case

    shape = VARIANT_CLASSES["mla-absorbed"].normalize_shape(DS_TINY.replace(kv_dtype=kv_dtype))
    t_max = max(lengths)
    m = build_variant("mla-absorbed", shape, "cpu", torch.bfloat16, seed=3)
    m.allocate_cache(len(lengths), t_max, lengths=lengths, page_size=page_size, shuffle_seed=1)
    m.fill_cache_random(t_max - 1, seed=4)
    x = torch.randn(len(lengths), 1, 64, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    case = Case("test", "ds-tiny", "mla-absorbed", backend, "decode", "cpu", len(lengths), t_max, 1, shape,
                context="list:" + "/".join(map(str, lengths)), cache_layout=f"paged:{page_size}")
    return m, case, StepInputs(x, t_max - 1)


def test_flashmla_reads_fp8_rows_from_the_case_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_fp8_kv import FakeFlashMLAFP8

    from mlabench.backends import BACKENDS, flashmla

    monkeypatch.setattr(flashmla, "_load_library", lambda: (FakeFlashMLAFP8(), None))
    m, case, inputs = _ds_paged_step("flashmla", "fp8_e4m3", 64, (130, 70))
    prepared = BACKENDS["flashmla"].prepare(m, case, inputs)
    assert prepared.extra_cache_bytes is None and prepared.detail.endswith(",native")  # the pool itself
    dequantized = acc.reference_output(m, inputs.x, inputs.start_pos, unquantized=False)
    assert acc.compare(prepared.fn(), dequantized, "bfloat16").ok


def test_flashinfer_refuses_fp8_in_any_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.backends import BACKENDS, flashinfer

    monkeypatch.setattr(flashinfer, "_load_library", lambda: (object(), None))
    with pytest.raises(UnsupportedError, match="flashinfer cannot read an fp8_e4m3 latent cache"):
        BACKENDS["flashinfer"].prepare(*_ds_paged_step("flashinfer", "fp8_e4m3", 16, (40, 7, 33)))


# --- the sweep and the serving suite ------------------------------------------------------------
SUITE = """
name = "fp8-serving"
[settings]
budget_s = 0.0
warmup_s = 0.0
min_samples = 1
max_samples = 1
[defaults]
model = "tiny"
mode = "decode"
batch = 3
seq_len = ["list:7/40/21"]
q_len = 1
cache_layout = ["contiguous", "paged:16"]
kv_dtype = ["fp8_e4m3"]
[[grid]]
variant = "mla-absorbed"
backend = ["eager", "triton"]
[[grid]]
variant = "gqa"
backend = "sdpa"
"""


def test_sweep_runs_fp8_on_ragged_and_paged_caches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--device", "cpu", "--out", str(tmp_path / "r"),
                            "--no-report", "--no-probe"], capsys)
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "r" / "results.csv", keep_default_na=False)
    fused = rows[rows.backend == "triton"]
    if fused.empty or (fused.status == "skipped").all():
        rows = rows[rows.backend != "triton"]  # no interpreter here: the kernel test above covers it
    assert len(rows) >= 4 and (rows.status == "ok").all(), rows[["variant", "backend", "status", "error"]]
    assert set(rows.kv_dtype) == {"fp8_e4m3"} and set(rows.cache_layout) == {"", "paged:16"}
    assert set(rows.context_lengths) == {"7/40/21"}
    assert (rows.kv_cache_bytes == rows.kv_cache_bytes_measured).all()
    assert (rows.quant_err.astype(float) > 1e-3).all()
    paged, contiguous = rows[rows.cache_layout == "paged:16"], rows[rows.cache_layout == ""]
    assert (paged.kv_cache_bytes.to_numpy() < contiguous.kv_cache_bytes.to_numpy()).all()


def test_serving_suite_crosses_kv_dtype_with_the_layouts() -> None:
    from mlabench.backends import served_variants

    suite = load_suite("serving")
    for device in ("cpu", "cuda"):
        cases = expand(suite, device, served_variants()).cases
        kinds = {(c.shape.kv_dtype, bool(c.context), c.cache_layout) for c in cases}
        assert {("", True, ""), ("fp8_e4m3", True, ""), ("", True, "paged:16"), ("fp8_e4m3", True, "paged:16")} <= kinds
        assert {c.model for c in cases} >= {"deepseek-v3", "deepseek-v2-lite", "llama-3-8b"}
    assert len(expand(suite, "cpu", served_variants()).cases) <= 64  # minutes on two cores
