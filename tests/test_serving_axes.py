"""Ragged batches (a context distribution on the seq_len axis) and paged caches (cache_layout).

Every decoding variant, ragged and/or paged, against a float64 reference built independently:
each sequence run alone, uniform and contiguous, on a copy of its own context. The slack
past a short sequence's end holds large finite garbage (contiguous) or another sequence's
page (paged), so a path that reads past a length shows. The analytic KV bytes equal the
cache tensors' bytes for every variant, layout and length combination; bad specs are one
line and exit 2 before anything runs. Shapes are tiny: the whole file runs in seconds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_run import run_cli

from mlabench import analytic
from mlabench.config import PRESETS
from mlabench.context import parse_context
from mlabench.errors import UnsupportedError, UsageError
from mlabench.layout import CacheLayout, parse_layout
from mlabench.step import decode_step, ragged_steps
from mlabench.suites import load_suite
from mlabench.variants import VARIANT_CLASSES, build_variant

TINY = PRESETS["tiny"]
DECODING = [name for name, cls in VARIANT_CLASSES.items()
            if cls.supports_decode and not cls.no_serving_layouts(cls.normalize_shape(TINY))]
LENGTHS = (5, 13, 9)  # tokens after the step; one sequence shorter than a 8-token page plus one
Q_LEN = 2


# --- specs ---------------------------------------------------------------------------------------
def test_context_specs_are_seeded_by_the_case_and_in_range() -> None:
    uni = parse_context("uniform:1024-32768")
    a, b = uni.lengths(64), uni.lengths(64)
    assert a == b and all(1024 <= n <= 32768 for n in a) and len(set(a)) > 32  # drawn, not constant
    assert uni.lengths(8) != a[:8] or uni.lengths(9) != a[:9]  # the batch size is part of the seed
    logn = parse_context("lognormal: median=4096, sigma=1")
    assert logn.text == "lognormal:median=4096,sigma=1"
    draws = sorted(logn.lengths(401))
    assert 2048 < draws[200] < 8192 and draws[0] >= 1  # median near 4096
    assert parse_context("list:900/4096/17").lengths(5) == (900, 4096, 17, 900, 4096)


@pytest.mark.parametrize(("text", "needle"), [
    ("gaussian:1-9", "unknown distribution"),
    ("uniform:", "is empty"),
    ("list:", "is empty"),
    ("uniform:9-3", "LOW <= HIGH"),
    ("lognormal:median=0,sigma=1", "median"),
    ("list:4/0", ">= 1"),
    ("4096", "neither a length nor a distribution"),
])
def test_bad_context_specs_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_context(text)


def test_layouts() -> None:
    assert parse_layout("contiguous") == CacheLayout() and CacheLayout().text == ""
    assert parse_layout("paged").page_size == 64 and parse_layout("PAGED:16").text == "paged:16"
    for text, needle in (("paged:48", "does not divide"), ("paged:0", "between 1"), ("paged:x", "positive integer"),
                         ("striped", "unknown layout")):
        with pytest.raises(UsageError, match=needle):
            parse_layout(text)


# --- every decoding variant, ragged and paged, against each sequence run alone ----------------------
def _logical(module, name: str, b: int, tokens: int) -> torch.Tensor:  # noqa: ANN001
    """Sequence b's first `tokens` cache rows in order, whatever the layout."""
    return module.cache_map.gather(module.cache_tensors()[name], [b])[0, :tokens]


@pytest.mark.parametrize("page_size", [0, 8], ids=["contiguous", "paged8"])
@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "uniform"])
@pytest.mark.parametrize("variant", DECODING)
def test_decode_matches_each_sequence_alone(variant: str, ragged: bool, page_size: int) -> None:
    lengths = LENGTHS if ragged else (max(LENGTHS),) * len(LENGTHS)
    t_max, batch = max(lengths), len(lengths)
    module = build_variant(variant, TINY, "cpu", torch.float64, seed=3)
    module.allocate_cache(batch, t_max, lengths=lengths if ragged else None, page_size=page_size, shuffle_seed=5)
    module.fill_cache_random(t_max - Q_LEN, seed=11)
    if not page_size:
        for t in module.cache_tensors().values():  # garbage in the slack: reading it would show
            for b, n in enumerate(lengths):
                t[b, n - Q_LEN:] = 1e3
    x = torch.randn(batch, Q_LEN, TINY.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out = module(x, t_max - Q_LEN)  # (B, S, d)
    assert torch.isfinite(out).all()

    for b, n in enumerate(lengths):
        alone = copy.deepcopy(module)
        alone.allocate_cache(1, n)
        for name, t in alone.cache_tensors().items():
            t[0, : n - Q_LEN] = _logical(module, name, b, n - Q_LEN)
        expected = alone(x[b : b + 1], n - Q_LEN)
        torch.testing.assert_close(out[b : b + 1], expected, rtol=1e-10, atol=1e-10,
                                   msg=f"{variant} sequence {b} of {n} tokens")
        # The step wrote its new rows where sequence b's own positions are, in either layout.
        for name, t in alone.cache_tensors().items():
            torch.testing.assert_close(_logical(module, name, b, n), t[0, :n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", DECODING)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_analytic_kv_bytes_equal_the_cache_tensors(variant: str, dtype: str) -> None:
    shape = TINY.replace(dtype=dtype)
    for lengths in (None, LENGTHS, (1, 16, 17)):
        t_max, batch = (17, 3) if lengths is None else (max(lengths), len(lengths))
        for page in (0, 1, 8, 16, 64):
            module = build_variant(variant, shape, "cpu", getattr(torch, dtype), seed=0)
            module.allocate_cache(batch, t_max, lengths=lengths, page_size=page)
            want = analytic.layout_kv_cache_bytes(variant, shape, batch, t_max, lengths, page)
            assert module.cache_nbytes() == want, (lengths, page)
    # Pages are whole: one 17-token sequence in 16-token pages holds 32 slots.
    per_token = analytic.kv_elements_per_token(variant, shape) * shape.element_bytes
    assert analytic.layout_kv_cache_bytes(variant, shape, 1, 17, (17,), 16) == 32 * per_token


@pytest.mark.parametrize("variant", [name for name, cls in VARIANT_CLASSES.items() if not cls.serving_layouts])
def test_variants_reading_their_cache_by_slices_refuse_ragged_and_paged(variant: str) -> None:
    shape = VARIANT_CLASSES[variant].normalize_shape(TINY)
    module = build_variant(variant, shape, "cpu", torch.float32, seed=0)
    for lengths, page in ((LENGTHS, 0), (None, 8)):
        with pytest.raises(UnsupportedError, match=r"by \(batch, token\) slices: no ragged or paged cache"):
            module.allocate_cache(len(LENGTHS), max(LENGTHS), lengths=lengths, page_size=page)
    module.allocate_cache(len(LENGTHS), max(LENGTHS))  # the uniform contiguous cache is theirs
    assert module.cache_nbytes() == analytic.kv_cache_bytes(variant, shape, len(LENGTHS), max(LENGTHS))


def test_ragged_flops_and_bytes_sum_over_the_real_lengths() -> None:
    sh = TINY
    for variant in ("gqa", "mla-absorbed", "mla-latent"):
        for scope in ("step", "core"):
            # Equal lengths are the uniform case exactly ...
            uniform = decode_step(3, 40, 2)
            same = ragged_steps((40, 40, 40), 2)
            assert analytic.ragged_scoped_flops(variant, sh, same, scope) == analytic.scoped_flops(
                variant, sh, uniform, scope)
            assert analytic.ragged_scoped_bytes(variant, sh, same, scope) == analytic.scoped_bytes(
                variant, sh, uniform, scope)
            # ... and a ragged batch costs less than batch x its longest sequence.
            ragged = ragged_steps((10, 40, 25), 2)
            assert analytic.ragged_scoped_flops(variant, sh, ragged, scope) < analytic.scoped_flops(
                variant, sh, uniform, scope)


# --- the sweep: axes, columns, accuracy and bad input ------------------------------------------------
SUITE = """
name = "ragged-paged"
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
q_len = 2
cache_layout = ["contiguous", "paged:16"]
[[grid]]
variant = "mla-absorbed"
backend = ["eager", "triton"]
[[grid]]
variant = "gqa"
backend = "sdpa"
"""


def test_sweep_records_lengths_layout_and_exact_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    code, _, err = run_cli(["sweep", "--suite", str(suite), "--device", "cpu", "--out", str(tmp_path / "r"),
                            "--no-report", "--no-probe"], capsys)
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "r" / "results.csv", keep_default_na=False)
    fused = rows[rows.backend == "triton"]
    if fused.empty or (fused.status == "skipped").all():
        rows = rows[rows.backend != "triton"]  # no interpreter here: the kernel has its own tests
    assert len(rows) >= 4 and (rows.status == "ok").all(), rows[["variant", "backend", "status", "error"]]
    assert set(rows.context) == {"list:7/40/21"} and set(rows.cache_layout) == {"", "paged:16"}
    assert (rows.seq_len == 40).all() and (rows.context_min == 7).all() and (rows.context_max == 40).all()
    assert set(rows.context_lengths) == {"7/40/21"}
    assert (rows.kv_cache_bytes == rows.kv_cache_bytes_measured).all()
    paged = rows[rows.cache_layout == "paged:16"]
    contiguous = rows[rows.cache_layout == ""]
    assert (paged.kv_cache_bytes.to_numpy() < contiguous.kv_cache_bytes.to_numpy()).all()  # 6 pages vs 3 x 40
    assert (rows.rel_err < 1e-4).all()
    assert (rows[rows.backend == "triton"].backend_detail.str.contains("paged=16") == (
        rows[rows.backend == "triton"].cache_layout == "paged:16")).all()


@pytest.mark.parametrize(("args", "needle"), [
    (["--seq-len", "gaussian:1-9"], "unknown distribution"),
    (["--seq-len", "uniform:"], "is empty"),
    (["--set", "cache_layout=paged:48"], "does not divide"),
    (["--set", "cache_layout=paged:0"], "page size"),
])
def test_bad_specs_are_one_line_exit_2_before_any_case(args: list[str], needle: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["sweep", "--device", "cpu", "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlabench: error: ") and needle in lines[0], err
    assert not (tmp_path / "r").exists()


def test_serving_suite_expands_on_cpu_and_gpu() -> None:
    from mlabench.backends import served_variants
    from mlabench.suites import expand

    suite = load_suite("serving")
    for device in ("cpu", "cuda"):
        cases = expand(suite, device, served_variants()).cases
        assert {c.model for c in cases} >= {"deepseek-v3", "deepseek-v2-lite", "llama-3-8b"}
        assert any(c.context for c in cases) and any(c.cache_layout for c in cases)
    assert {c.cache_layout for c in cases} >= {"", "paged:16", "paged:64"}


# --- the library adapters read the case's own pages (stand-ins of their APIs, float64) -------------
def _native_step(backend: str, page_size: int, lengths: tuple[int, ...]):  # noqa: ANN202
    from test_backends_paged import DS_TINY

    from mlabench.backends import StepInputs
    from mlabench.case import Case

    q_len, t_max = 2, max(lengths)
    module = build_variant("mla-absorbed", DS_TINY, device="cpu", dtype=torch.bfloat16, seed=3)
    module.allocate_cache(len(lengths), t_max, lengths=lengths, page_size=page_size, shuffle_seed=1)
    module.fill_cache_random(t_max - q_len, seed=4)
    x = torch.randn(len(lengths), q_len, DS_TINY.hidden_size, generator=torch.Generator().manual_seed(4))
    case = Case("test", DS_TINY.name, "mla-absorbed", backend, "decode", "cpu", len(lengths), t_max, q_len,
                module.shape, context="list:" + "/".join(map(str, lengths)), cache_layout=f"paged:{page_size}")
    return module, case, StepInputs(x.to(torch.bfloat16), t_max - q_len)


def _check_against_reference(module, fn, inputs) -> None:  # noqa: ANN001
    ref = module.reference()(inputs.x.double(), inputs.start_pos)  # contiguous, same lengths
    out = fn()
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).norm() / ref.norm()).item() < 3e-2


def test_flashmla_reads_the_case_pages_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_backends_paged import FakeFlashMLA

    from mlabench.backends import BACKENDS, flashmla

    fake = FakeFlashMLA()
    monkeypatch.setattr(flashmla, "_load_library", lambda: (fake, None))
    module, case, inputs = _native_step("flashmla", 64, (130, 70))
    prepared = BACKENDS["flashmla"].prepare(module, case, inputs)
    assert prepared.extra_cache_bytes is None and prepared.detail.endswith(",native")  # no second copy
    _check_against_reference(module, prepared.fn, inputs)
    call = fake.calls[-1]
    assert call["k_cache"].data_ptr() == module.cache_tensors()["kv_cache"].data_ptr()
    assert fake.metadata_args[0].tolist() == [130, 70]
    module, case, inputs = _native_step("flashmla", 16, (130, 70))
    with pytest.raises(UnsupportedError, match="pages of 64"):  # FlashMLA reads 64-token pages only
        BACKENDS["flashmla"].prepare(module, case, inputs)


def test_flashinfer_plans_each_sequence_whole_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from test_backends_paged import FakeWrapper

    from mlabench.backends import BACKENDS, flashinfer

    fake = SimpleNamespace(__version__="stand-in", mla=SimpleNamespace(BatchMLAPagedAttentionWrapper=FakeWrapper))
    monkeypatch.setattr(flashinfer, "_load_library", lambda: (fake, None))
    FakeWrapper.instances.clear()
    module, case, inputs = _native_step("flashinfer", 16, (40, 7, 33))
    prepared = BACKENDS["flashinfer"].prepare(module, case, inputs)
    _check_against_reference(module, prepared.fn, inputs)
    p = FakeWrapper.instances[-1].plan_args
    assert p["page_size"] == 16 and p["kv_len"].tolist() == [40, 7, 33]
    assert p["kv_indptr"].tolist() == [0, 3, 4, 7]  # 3 + 1 + 3 whole pages, nothing past a sequence's end
    assert FakeWrapper.instances[-1].runs[-1]["ckv"].data_ptr() == module.cache_tensors()["kv_cache"].data_ptr()
