"""The fused latent core contract: what triton, flashmla and flashinfer cores receive, checked once.

MLAAbsorbed turns its core's arguments into a LatentStep (the cache tensor itself, the
step's position and lengths), refusing views that are not its cache; `LatentCore` does
that on the first call only; `optional_library` and `first_call_ms` are the loader and the
compile-time block every library backend shares.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from mlabench.backends import StepInputs
from mlabench.backends.latent import LatentCore, first_call_ms
from mlabench.backends.library import LoadFailure, gpu_unavailable, optional_library
from mlabench.config import from_name
from mlabench.errors import UnsupportedError
from mlabench.variants import build_variant, eager_attention
from mlabench.variants.latent_step import LatentStep

CPU = torch.device("cpu")
BATCH, SEQ_LEN, Q_LEN = 2, 24, 2


def absorbed() -> tuple[Any, StepInputs]:
    shape = from_name("tiny", dtype="float32")
    module = build_variant("mla-absorbed", shape, CPU, torch.float32, seed=0)
    module.allocate_cache(BATCH + 1, SEQ_LEN + 8)  # larger than the step: views must keep the cache's strides
    module.fill_cache_random(SEQ_LEN - Q_LEN, seed=1)
    x = torch.randn(BATCH, Q_LEN, shape.hidden_size, generator=torch.Generator().manual_seed(2))
    return module, StepInputs(x, SEQ_LEN - Q_LEN)


def test_latent_step_is_the_cache_itself() -> None:
    module, inputs = absorbed()
    q, k, v, scale, causal = module.core_inputs(inputs.x, inputs.start_pos)
    seqlens = torch.full((BATCH,), SEQ_LEN, dtype=torch.int32)
    step = module.latent_step(q, k, v, scale, causal, seqlens)
    cache = module.cache_tensors()["kv_cache"]
    assert step.cache is cache and step.q is q and step.cache_seqlens is seqlens
    assert (step.batch, step.start, step.new_tokens, step.end) == (BATCH, SEQ_LEN - Q_LEN, Q_LEN, SEQ_LEN)
    assert step.d_c == module.shape.kv_lora_rank and step.scale == module.shape.mla_softmax_scale
    assert step.kv.data_ptr() == cache.data_ptr() and step.kv.stride() == cache.stride()
    assert step.kv.shape == (BATCH, SEQ_LEN, cache.shape[-1]) and torch.equal(step.kv, k.squeeze(2))
    assert torch.equal(step.new_rows, cache[:BATCH, SEQ_LEN - Q_LEN:SEQ_LEN])


def test_latent_step_refuses_what_a_kernel_would_misread() -> None:
    module, inputs = absorbed()
    q, k, v, scale, _ = module.core_inputs(inputs.x, inputs.start_pos)
    seqlens = torch.full((BATCH,), SEQ_LEN, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="not a view of the module's kv_cache"):
        module.latent_step(q, k.clone(), v, scale, True, seqlens)
    with pytest.raises(RuntimeError, match="v must be k"):
        module.latent_step(q, k, v.clone(), scale, True, seqlens)
    with pytest.raises(UnsupportedError, match="causal only"):
        module.latent_step(q, k, v, scale, False, seqlens)
    with pytest.raises(UnsupportedError, match="one KV head"):
        module.latent_step(q, k.expand(-1, -1, 2, -1), v, scale, True, seqlens)
    module.latent_step(q, k.clone(), v, scale, True, seqlens, check=False)  # after the first call: no checks


class EagerLatentCore(LatentCore):
    """A stand-in fused kernel: eager attention over the step's cache view."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.checks = 0
        self.steps: list[LatentStep] = []

    def check(self, step: LatentStep) -> None:
        self.checks += 1

    def attend(self, step: LatentStep) -> torch.Tensor:
        self.steps.append(step)
        kv = step.kv[:, :, None, :]  # (B, T, 1, D)
        return eager_attention(step.q, kv, kv[..., : step.d_c], step.scale, True)


def test_a_latent_core_runs_the_step_and_checks_once() -> None:
    module, inputs = absorbed()
    core = EagerLatentCore(module, inputs)
    assert core.cache_seqlens.dtype == torch.int32 and core.cache_seqlens.tolist() == [SEQ_LEN] * BATCH
    out = module(inputs.x, inputs.start_pos, core)
    assert torch.allclose(out, module(inputs.x, inputs.start_pos), atol=1e-5)
    module(inputs.x, inputs.start_pos, core)
    core.alone(*module.core_inputs(inputs.x, inputs.start_pos))
    assert core.checks == 1 and len(core.steps) == 3
    assert all(s.cache_seqlens is core.cache_seqlens for s in core.steps)  # allocated once per case
    other = build_variant("mla-latent", from_name("tiny", dtype="float32"), CPU, torch.float32)
    with pytest.raises(UnsupportedError, match="mla-absorbed only"):
        EagerLatentCore(other, inputs)


def test_first_call_ms_times_one_call() -> None:
    calls: list[int] = []
    ms = first_call_ms(lambda: calls.append(1), CPU)
    assert calls == [1] and 0 <= ms < 1000


def test_optional_library_skips_missing_and_flags_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = optional_library("mlabench_no_such_library", "pip install it")
    assert missing() == (None, "mlabench_no_such_library is not installed (pip install it)")
    assert not isinstance(missing()[1], LoadFailure)  # not installed: skipped, not unsupported

    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "mlabench_broken_library", None)  # `import` raises ImportError
    assert optional_library("mlabench_broken_library", "hint")()[1] == "mlabench_broken_library is not installed (hint)"
    monkeypatch.setitem(sys.modules, "mlabench_broken_library", Broken())
    lib, reason = optional_library("mlabench_broken_library", "hint", "sub")()
    assert lib is None and isinstance(reason, LoadFailure) and "libcudart" in reason
    json_loader = optional_library("json", "hint")
    assert json_loader()[0] is json_loader()[0] is sys.modules["json"]


def test_gpu_unavailable_names_the_library_then_the_device_then_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = (None, "lib is not installed (hint)")
    present = (object(), None)
    check = dict(gpus="an SM90 or SM100", majors=(9, 10), purpose="sparse decode")
    assert gpu_unavailable(lambda: missing, torch.device("cuda"), **check) == "lib is not installed (hint)"
    assert gpu_unavailable(lambda: present, CPU, **check) == "needs an SM90 or SM100 CUDA GPU, not cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_unavailable(lambda: present, torch.device("cuda"), **check) == "CUDA is not available"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((8, 6), "needs an SM90 or SM100 GPU for sparse decode; this GPU is sm_86"),
                                 ((9, 0), None), ((10, 0), None), ((12, 0), "this GPU is sm_120")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        reason = gpu_unavailable(lambda: present, torch.device("cuda"), **check)
        assert reason == expected if expected is None or expected.startswith("needs") else expected in reason
