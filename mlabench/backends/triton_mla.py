"""`triton`: mla-absorbed and dsa decode through our fused Triton kernel (`kernels/mla_decode.py`).

dsa's LatentStep carries its top-k `indices`; the kernel then gathers those latent rows only.

The step is the variant's own forward; only the core changes. The core is a LatentCore
(latent.py): it gets the step as a LatentStep, whose `kv` is a (B, T, d_c + d_r) view of the
module's cache tensor, so the kernel reads the cache in place and V is never materialized.
Every sequence holds T = start_pos + q_len valid tokens (`cache_seqlens`, allocated once).

Options (each optional; unset ones get the kernel's defaults, see kernels/NOTES.md): the
launch knobs `block_h`, `block_n`, `num_warps`, `num_stages` and `num_splits`. The
configuration that runs - all five values, chosen once per case from its shape - is the
row's `backend_detail`, e.g. `triton:block_h=16,block_n=32,num_warps=4,num_stages=3,num_splits=8`.
An FP8 latent cache (`kv_dtype` fp8_e4m3 or fp8_e5m2) is read as stored, DeepSeek's rows of
FP8 latent, fp32 scales per 128 and bf16 RoPE key, and dequantized in registers.
Without CUDA the kernel runs only under TRITON_INTERPRET=1 (set before triton is imported),
which is for tests, not timing.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

from mlabench.backends.latent import LatentCore, first_call_ms
from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.errors import UnsupportedError, UsageError
from mlabench.kernels.mla_decode import mla_decode, triton_unavailable_reason
from mlabench.kernels.mla_decode_launch import LAUNCH_KNOBS, LaunchConfig, launch_value_error, mla_decode_config
from mlabench.variants.base import AttentionVariant
from mlabench.variants.gla import GLAAbsorbed
from mlabench.variants.latent_step import LatentStep
from mlabench.variants.mla import MLAAbsorbed

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


class TritonMLACore(LatentCore):
    """A LatentStep -> o_lat via `mla_decode` on the cache tensor itself."""

    library = "the triton backend"
    fp8_kv = ("fp8_e4m3", "fp8_e5m2")  # DeepSeek's FP8 rows, dequantized in registers
    serves = (MLAAbsorbed, GLAAbsorbed)  # GLA: its latent heads are a grid axis of the same kernel

    def __init__(self, module: AttentionVariant, inputs: StepInputs, knobs: dict[str, int | None]):
        super().__init__(module, inputs)
        self.knobs = knobs  # launch options as given; None = kernel default
        self.config: LaunchConfig | None = None  # resolved on the first call, then fixed for the case

    def attend(self, step: LatentStep) -> Tensor:
        kv = step.kv  # (B, T, D) view with the cache's strides, or the page pool: no copy
        table = step.block_table  # (B, max pages) for a paged cache, else None
        if self.config is None:
            # Resolved once, so every timed call runs (and the row records) the same launch.
            kv_len = None if table is None else table.shape[1] * step.page_size
            self.config = mla_decode_config(step.q, kv, **self.knobs, kv_fp8=bool(step.kv_dtype), kv_len=kv_len,
                                            latent_heads=step.latent_heads)
        cfg = self.config
        paged = {} if table is None else {"block_table": table}
        return mla_decode(step.q, kv, step.cache_seqlens, head_dim_v=step.d_c, softmax_scale=step.scale,
                          **dataclasses.asdict(cfg), latent_heads=step.latent_heads,
                          # only what this step uses: an FP8 format, dsa's top-k rows, a block table
                          **({"kv_dtype": step.kv_dtype} if step.kv_dtype else {}),
                          **({"indices": step.indices} if step.indices is not None else {}),
                          **paged)  # (B, S, H, d_c)


@register_backend(
    "triton",
    description="fused Triton MLA decode kernel (split-KV) reading the latent cache in place; GLA's latent "
                "heads as a grid axis; dsa's top-k rows gathered by index",
    variants=("mla-absorbed", "gla-absorbed", "dsa"),
    modes=("decode",),
    fused=True,
    unavailable=triton_unavailable_reason,
    options={name: functools.partial(_launch_option, name=name) for name in LAUNCH_KNOBS},
)
def prepare_triton(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    if not isinstance(module, TritonMLACore.serves):
        raise UnsupportedError(f"the triton backend serves mla-absorbed, gla-absorbed and dsa only, not {module.name}")
    knobs = launch_options(case)
    if module.weight_dtype not in _DTYPES:
        raise UnsupportedError(f"the triton MLA decode kernel takes bf16/fp16/fp32, not {module.weight_dtype}")
    core = TritonMLACore(module, inputs, knobs)
    x, start = inputs.x, inputs.start_pos

    def fn() -> Tensor:
        if isinstance(module, GLAAbsorbed):  # the kernel reads [c_j, k_pe] in place: no K to assemble
            return module.forward_fused(x, start, core)
        return module(x, start, core)

    # The first call checks the in-place contract and, on a GPU, JIT-compiles the kernel (or
    # loads it from Triton's disk cache): compile time, outside the timed calls.
    compile_ms = first_call_ms(fn, x.device)
    assert core.config is not None  # set by the first call
    paged = module.cache_map.page_size if module.cache_map is not None else 0
    detail = f"triton:{core.config.detail}" + (f",paged={paged}" if paged else "")
    return Prepared(fn=fn, detail=detail, compile_ms=compile_ms, core=core.alone)
