"""`triton`: mla-absorbed decode through our fused Triton kernel (`kernels/mla_decode.py`).

The step is the variant's own forward; only the core changes. MLAAbsorbed calls
`core(q', latent, latent[..., :d_c], tau, True)` with `latent` a (B, T, 1, d_c + d_r) view
of the cache tensor, so the kernel reads the cache in place: the core squeezes the head
dim (a view) and passes it as `kv_cache`, and V is never materialized. Every sequence holds
T = start_pos + q_len valid tokens; `cache_seqlens` is allocated once in `prepare`.

Options (each optional; unset ones get the kernel's defaults, see kernels/NOTES.md): the
launch knobs `block_h`, `block_n`, `num_warps`, `num_stages` and `num_splits`. The
configuration that runs - all five values, chosen once per case from its shape - is the
row's `backend_detail`, e.g. `triton:block_h=16,block_n=32,num_warps=4,num_stages=3,num_splits=8`.
Without CUDA the kernel runs only under TRITON_INTERPRET=1 (set before triton is imported),
which is for tests, not timing.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import Tensor

from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.errors import UnsupportedError, UsageError
from mlabench.kernels.mla_decode import mla_decode, triton_unavailable_reason
from mlabench.kernels.mla_decode_launch import LAUNCH_KNOBS, LaunchConfig, launch_value_error, mla_decode_config
from mlabench.variants.base import AttentionVariant

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _launch_option(case: Case, name: str) -> int | None:
    """The case's launch knob `name`, validated (None: the kernel picks)."""
    value = case.option(name)
    err = launch_value_error(name, value)
    if err is not None:
        raise UsageError(f"{name}: {err}")
    return value


def launch_options(case: Case) -> dict[str, int | None]:
    """The case's five launch knobs, validated (None: the kernel picks)."""
    return {name: _launch_option(case, name) for name in LAUNCH_KNOBS}


class TritonMLACore:
    """core(q', latent, latent[..., :d_c], tau, True) -> o_lat via `mla_decode` on the cache itself."""

    def __init__(self, cache: Tensor, cache_seqlens: Tensor, head_dim_v: int, knobs: dict[str, int | None]):
        self.cache = cache  # (B_max, T_max, d_c + d_r): the module's kv_cache tensor
        self.cache_seqlens = cache_seqlens  # (B,) int32
        self.head_dim_v = head_dim_v
        self.knobs = knobs  # launch options as given; None = kernel default
        self.config: LaunchConfig | None = None  # resolved on the first call, then fixed for the case

    def _check(self, k: Tensor, v: Tensor, kv: Tensor, causal: bool) -> None:
        """Once per case: the kernel must read the cache tensor in place and V must be K's prefix."""
        if not causal:
            raise UnsupportedError("the triton MLA decode kernel is causal only")
        if k.shape[2] != 1:
            raise UnsupportedError(f"the triton MLA decode kernel takes one KV head, got {k.shape[2]}")
        if kv.untyped_storage().data_ptr() != self.cache.untyped_storage().data_ptr():
            raise RuntimeError("triton core: k is not a view of the module's kv_cache (it would read a copy)")
        if v.data_ptr() != k.data_ptr() or v.stride() != k.stride() or v.shape[-1] != self.head_dim_v:
            raise RuntimeError(f"triton core: v must be k[..., :{self.head_dim_v}], a view of the same latent")

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> Tensor:
        kv = k.squeeze(2)  # (B, T, D) view, strides of the cache: no copy
        if self.config is None:
            self._check(k, v, kv, causal)
            # Resolved once, so every timed call runs (and the row records) the same launch.
            self.config = mla_decode_config(q, kv, **self.knobs)
        cfg = self.config
        return mla_decode(q, kv, self.cache_seqlens, head_dim_v=self.head_dim_v, softmax_scale=scale,
                          num_splits=cfg.num_splits, block_h=cfg.block_h, block_n=cfg.block_n,
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # (B, S, H, d_c)


@register_backend(
    "triton",
    description="fused Triton MLA decode kernel (split-KV) reading the latent cache in place",
    variants=("mla-absorbed",),
    modes=("decode",),
    fused=True,
    unavailable=triton_unavailable_reason,
    options={name: functools.partial(_launch_option, name=name) for name in LAUNCH_KNOBS},
)
def prepare_triton(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    if module.name != "mla-absorbed":
        raise UnsupportedError(f"the triton backend serves mla-absorbed only, not {module.name}")
    knobs = launch_options(case)
    x, start = inputs.x, inputs.start_pos
    if module.weight_dtype not in _DTYPES:
        raise UnsupportedError(f"the triton MLA decode kernel takes bf16/fp16/fp32, not {module.weight_dtype}")
    cache = module.cache_tensors()["kv_cache"]
    b, s = x.shape[:2]
    cache_seqlens = torch.full((b,), start + s, dtype=torch.int32, device=x.device)
    core = TritonMLACore(cache, cache_seqlens, module.shape.kv_lora_rank, knobs)

    def fn() -> Tensor:
        return module(x, start, core)

    # The first call checks the in-place contract and, on a GPU, JIT-compiles the kernel (or
    # loads it from Triton's disk cache): compile time, outside the timed calls.
    t0 = time.perf_counter()
    fn()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    compile_ms = (time.perf_counter() - t0) * 1e3
    assert core.config is not None  # set by the first call
    return Prepared(fn=fn, detail=f"triton:{core.config.detail}", compile_ms=compile_ms, core=core)
