"""Every backend computes the variant's step: the float64 eager reference is the judge.

The accuracy matrix is parametrized over the registry: each (backend, variant, mode) a
backend serves and that can run here is prepared on fresh random inputs, with the
context filled by `fill_cache_random`, and compared with `module.reference()` on the same
inputs. Without CUDA, Triton runs under the interpreter (conftest.py). `compiled` is left
out of the matrix (a compile takes seconds on a small CPU) and tested on one case below;
backends whose library or GPU is missing are covered by their own tests further down.
"""

from __future__ import annotations

import pytest
import torch

from mlabench.backends import BACKENDS, Prepared, StepInputs, apply_options, triton_mla
from mlabench.backends import sdpa as sdpa_mod
from mlabench.backends.compiled import compiled_graph_count
from mlabench.case import Case
from mlabench.config import AttentionShape, from_name
from mlabench.errors import UnsupportedError, UsageError
from mlabench.kernels import mla_decode as mla_decode_mod
from mlabench.variants import VARIANT_CLASSES, AttentionVariant, build_variant

CPU = torch.device("cpu")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY = from_name("tiny")
BATCH, SEQ_LEN = 2, 21
# Norm-relative error against the float64 reference.
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
# Backends the matrix skips (each has a dedicated test) and options it runs per backend.
EXPENSIVE = {"compiled"}
MATRIX_OPTIONS: dict[str, list[dict[str, object]]] = {"sdpa": [{"sdpa_kernel": "auto"}, {"sdpa_kernel": "math"}]}
STEPS = [("prefill", SEQ_LEN), ("decode", 1), ("decode", 2)]  # (mode, q_len)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def setup_step(variant: str, backend: str, mode: str, q_len: int, dtype: torch.dtype = torch.float32,
               shape: AttentionShape = TINY, seq_len: int = SEQ_LEN, batch: int = BATCH, seed: int = 0,
               **options: object) -> tuple[AttentionVariant, Case, StepInputs]:
    """A module with its cache allocated and the context [0, seq_len - q_len) filled at random, and the step."""
    module = build_variant(variant, shape, device=DEVICE, dtype=dtype, seed=seed)
    module.allocate_cache(batch, seq_len)
    start = seq_len - q_len
    gen = torch.Generator().manual_seed(seed + 1)
    if start > 0:
        module.fill_cache_random(start, generator=gen)
    x = torch.randn(batch, q_len, shape.hidden_size, generator=gen).to(DEVICE, dtype)
    case = Case("test", shape.name, variant, backend, mode, DEVICE.type, batch, seq_len, q_len, module.shape,
                options=tuple(options.items()))
    return module, case, StepInputs(x, start)


def check_against_reference(module: AttentionVariant, prepared: Prepared, inputs: StepInputs,
                            dtype: torch.dtype) -> torch.Tensor:
    ref_module = module.reference()  # float64 copy of weights and cache contents
    out = prepared.fn()
    again = prepared.fn()  # same start_pos: overwrites the same slots, same answer
    ref = ref_module(inputs.x.double(), inputs.start_pos)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[dtype], f"rel err {rel_err(out, ref):.2e}"
    assert torch.equal(out, again)
    return out


def _matrix() -> list[pytest.param]:
    params = []
    for name, spec in BACKENDS.items():
        if name in EXPENSIVE or spec.unavailable(DEVICE) is not None:
            continue
        for options in MATRIX_OPTIONS.get(name, [{}]):
            for variant in spec.variants:
                for mode, q_len in STEPS:
                    if mode not in spec.modes or (mode == "decode" and not VARIANT_CLASSES[variant].supports_decode):
                        continue
                    dtypes = [torch.float32, torch.bfloat16] if q_len == 2 else [torch.float32]
                    for dtype in dtypes:
                        label = "-".join([name, *map(str, options.values()), variant, mode, str(q_len), str(dtype)[6:]])
                        params.append(pytest.param(name, options, variant, mode, q_len, dtype, id=label))
    return params


@pytest.mark.parametrize(("backend", "options", "variant", "mode", "q_len", "dtype"), _matrix())
def test_backend_matches_float64_reference(backend: str, options: dict, variant: str, mode: str, q_len: int,
                                           dtype: torch.dtype) -> None:
    module, case, inputs = setup_step(variant, backend, mode, q_len, dtype, seed=len(variant) + q_len, **options)
    try:
        prepared = BACKENDS[backend].prepare(module, case, inputs)
    except UnsupportedError as err:  # e.g. FlashMLA on a GPU, at tiny dims: its own tests cover it
        pytest.skip(f"unsupported: {err}")
    assert prepared.detail
    check_against_reference(module, prepared, inputs, dtype)


def test_matrix_covers_the_fused_cpu_paths() -> None:
    ids = {p.id for p in _matrix()}
    assert "sdpa-math-mla-absorbed-decode-2-float32" in ids
    assert "sdpa-auto-linformer-prefill-21-float32" in ids
    if triton_mla.triton_unavailable_reason(DEVICE) is None:
        assert "triton-mla-absorbed-decode-1-float32" in ids


# --- sdpa ---------------------------------------------------------------------------------


@pytest.mark.skipif(DEVICE.type != "cpu", reason="which kernels are impossible depends on the device")
@pytest.mark.parametrize(("variant", "kernel", "reason"), [
    ("mla-absorbed", "flash", "same last dimension"),  # flash needs v as wide as q/k (576 vs 512 in DeepSeek)
    ("mla-latent", "flash", "same last dimension"),
    ("gqa", "efficient", "efficient"),  # a CUDA kernel
    ("gqa", "cudnn", "cudnn"),
])
def test_sdpa_impossible_kernel_is_unsupported_with_reason(variant: str, kernel: str, reason: str) -> None:
    module, case, inputs = setup_step(variant, "sdpa", "decode", 2, sdpa_kernel=kernel)
    with pytest.raises(UnsupportedError, match=reason) as info:
        BACKENDS["sdpa"].prepare(module, case, inputs)
    assert f"sdpa kernel {kernel}" in str(info.value) and "cpu" in str(info.value)


def test_sdpa_detail_records_the_kernel() -> None:
    module, case, inputs = setup_step("gqa", "sdpa", "decode", 1, sdpa_kernel="math")
    assert BACKENDS["sdpa"].prepare(module, case, inputs).detail == "sdpa:math"
    module, case, inputs = setup_step("gqa", "sdpa", "decode", 1)
    detail = BACKENDS["sdpa"].prepare(module, case, inputs).detail
    assert detail.startswith("sdpa:auto")
    if DEVICE.type == "cpu":
        assert detail == "sdpa:auto->flash"  # PyTorch's CPU flash kernel takes equal head dims
        module, case, inputs = setup_step("mla-absorbed", "sdpa", "decode", 1)
        assert BACKENDS["sdpa"].prepare(module, case, inputs).detail == "sdpa:auto->math"


def test_sdpa_unknown_kernel_is_a_usage_error() -> None:
    module, case, inputs = setup_step("gqa", "sdpa", "decode", 1, sdpa_kernel="fastest")
    with pytest.raises(UsageError, match="sdpa_kernel"):
        BACKENDS["sdpa"].prepare(module, case, inputs)


@pytest.mark.parametrize(("mode", "q_len", "expect"), [("decode", 1, "none"), ("prefill", SEQ_LEN, "is_causal"),
                                                       ("decode", 3, "mask")])
def test_sdpa_bottom_right_causal_masking(monkeypatch: pytest.MonkeyPatch, mode: str, q_len: int,
                                          expect: str) -> None:
    calls: list[dict] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: object) -> torch.Tensor:
        calls.append({"q": q.shape, "k": k.shape, **kw})
        return real(q, k, v, **kw)

    monkeypatch.setattr(sdpa_mod.F, "scaled_dot_product_attention", spy)
    module, case, inputs = setup_step("gqa", "sdpa", mode, q_len)
    prepared = BACKENDS["sdpa"].prepare(module, case, inputs)
    prepared.fn()
    first, last = calls[0], calls[-1]
    assert last["q"] == (BATCH, TINY.num_heads, q_len, TINY.head_dim)  # (B, H, S, D) at the boundary
    assert last["k"] == (BATCH, TINY.num_kv_heads, SEQ_LEN, TINY.head_dim)
    assert last["enable_gqa"] is True and last["scale"] == TINY.head_dim**-0.5
    if expect == "none":
        assert last["attn_mask"] is None and last["is_causal"] is False
    elif expect == "is_causal":
        assert last["attn_mask"] is None and last["is_causal"] is True
    else:
        mask = last["attn_mask"]
        assert last["is_causal"] is False and mask.shape == (q_len, SEQ_LEN)
        # Query s (absolute position T - S + s) sees keys t <= T - S + s.
        assert mask.sum(dim=1).tolist() == [SEQ_LEN - q_len + 1 + s for s in range(q_len)]
        assert first["attn_mask"] is mask  # built once per case, not per call


# --- triton ---------------------------------------------------------------------------------

needs_triton = pytest.mark.skipif(triton_mla.triton_unavailable_reason(DEVICE) is not None,
                                  reason="the triton kernel cannot run here")


@needs_triton
def test_triton_core_reads_the_cache_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor, dict]] = []
    real = triton_mla.mla_decode

    def spy(q: torch.Tensor, kv: torch.Tensor, seqlens: torch.Tensor, **kw: object) -> torch.Tensor:
        seen.append((kv, seqlens, kw))
        return real(q, kv, seqlens, **kw)

    monkeypatch.setattr(triton_mla, "mla_decode", spy)
    module, case, inputs = setup_step("mla-absorbed", "triton", "decode", 2, num_splits=2)
    prepared = BACKENDS["triton"].prepare(module, case, inputs)
    # Unset knobs get the kernel's defaults; the row records all five values that ran.
    assert prepared.detail == "triton:block_h=16,block_n=16,num_warps=4,num_stages=3,num_splits=2"
    assert prepared.compile_ms is not None
    prepared.fn()
    cache = module.cache_tensors()["kv_cache"]  # (B, T_max, d_c + d_r)
    kv, seqlens, kw = seen[-1]
    assert kv.data_ptr() == cache.data_ptr() and kv.stride() == cache.stride()  # a view, no copy
    assert kv.untyped_storage().data_ptr() == cache.untyped_storage().data_ptr()
    assert seqlens.dtype == torch.int32 and seqlens.tolist() == [SEQ_LEN] * BATCH
    assert seqlens is seen[0][1]  # allocated once in prepare
    assert kw == {"head_dim_v": TINY.kv_lora_rank, "softmax_scale": module.shape.mla_softmax_scale,
                  "num_splits": 2, "block_h": 16, "block_n": 16, "num_warps": 4, "num_stages": 3,
                  "latent_heads": 1}


def test_triton_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BACKENDS["triton"]
    assert spec.variants == ("mla-absorbed", "gla-absorbed", "dsa") and spec.modes == ("decode",)
    monkeypatch.setattr(mla_decode_mod, "INTERPRETED", False)
    assert spec.unavailable(CPU) == "needs a CUDA device or TRITON_INTERPRET=1 (set before import)"
    monkeypatch.setattr(mla_decode_mod, "HAS_TRITON", False)
    assert spec.unavailable(CPU) == "triton is not installed"


@needs_triton
def test_triton_refuses_what_it_cannot_serve() -> None:
    module, case, inputs = setup_step("mla-absorbed", "triton", "decode", 1, num_splits=0)
    with pytest.raises(UsageError, match="num_splits"):
        BACKENDS["triton"].prepare(module, case, inputs)
    for name, bad in (("block_h", 24), ("block_n", 8), ("num_warps", 3), ("num_stages", 0)):
        module, case, inputs = setup_step("mla-absorbed", "triton", "decode", 1, **{name: bad})
        with pytest.raises(UsageError, match=rf"^{name}: must be .*, got {bad}$"):
            apply_options([case], dict(case.options))  # rejected before any case runs
        with pytest.raises(UsageError, match=rf"^{name}: must be .*, got {bad}$"):
            BACKENDS["triton"].prepare(module, case, inputs)
    module, case, inputs = setup_step("mla-latent", "triton", "decode", 1)
    with pytest.raises(UnsupportedError, match="mla-absorbed, gla-absorbed and dsa only"):
        BACKENDS["triton"].prepare(module, case, inputs)
    module, case, inputs = setup_step("mla-absorbed", "triton", "decode", 1, dtype=torch.float64,
                                      shape=TINY.replace(dtype="float64"))
    with pytest.raises(UnsupportedError, match="bf16/fp16/fp32"):
        BACKENDS["triton"].prepare(module, case, inputs)


# --- compiled --------------------------------------------------------------------------------


# The first torch.compile in a process pays for starting inductor (most of this test's time): under
# pytest-xdist both cases go to one worker, so only one pays it.
@pytest.mark.xdist_group("inductor")
@pytest.mark.parametrize(("variant", "mode", "q_len"), [("mla-absorbed", "decode", 2), ("gqa", "prefill", SEQ_LEN)])
def test_compiled_step_compiles_once_and_matches_eager(variant: str, mode: str, q_len: int) -> None:
    module, case, inputs = setup_step(variant, "compiled", mode, q_len)
    prepared = BACKENDS["compiled"].prepare(module, case, inputs)
    assert prepared.compile_ms is not None and prepared.compile_ms > 0
    assert prepared.detail.startswith("compile:default")
    graphs = compiled_graph_count()
    out = check_against_reference(module, prepared, inputs, torch.float32)  # two calls, plus reference()
    # The compiled step writes the module's own cache in place (not a functional copy of it).
    cache = module.cache_tensors()
    written = {name: t.clone() for name, t in cache.items()}
    for t in cache.values():
        t[:, inputs.start_pos:].zero_()
    prepared.fn()
    for name, t in cache.items():
        assert torch.equal(t, written[name]), f"{name} was not written by the compiled step"
    for _ in range(2):
        prepared.fn()
    assert compiled_graph_count() == graphs, "a repeated call recompiled"
    eager = module(inputs.x, inputs.start_pos)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


def test_compiled_options_are_validated() -> None:
    module, case, inputs = setup_step("gqa", "compiled", "decode", 1, compile_mode="fastest")
    with pytest.raises(UsageError, match="compile_mode"):
        BACKENDS["compiled"].prepare(module, case, inputs)
    module, case, inputs = setup_step("gqa", "compiled", "decode", 1, cpp_min_chunk_size=-1)
    with pytest.raises(UsageError, match="cpp_min_chunk_size"):
        BACKENDS["compiled"].prepare(module, case, inputs)
    if DEVICE.type == "cpu":
        module, case, inputs = setup_step("gqa", "compiled", "decode", 1, compile_mode="reduce-overhead")
        with pytest.raises(UnsupportedError, match="CUDA graphs"):
            BACKENDS["compiled"].prepare(module, case, inputs)


def test_compiled_refuses_linformer_decode_before_compiling() -> None:
    module, case, inputs = setup_step("linformer", "compiled", "decode", 1)
    before = compiled_graph_count()
    with pytest.raises(UnsupportedError, match="no incremental decode"):
        BACKENDS["compiled"].prepare(module, case, inputs)
    assert compiled_graph_count() == before
