"""`flashmla`: DeepSeek's FlashMLA dense decode kernel for mla-absorbed (Hopper, BF16).

FlashMLA reads a paged cache (num_pages, 64, 1, 576) through a block table. `prepare`
copies our latent cache into such a page pool once; the timed closure still runs the
whole variant step, whose core first writes this step's new latent rows into the pool (a
B*S*576-element scatter, what a serving engine's cache write costs) and then calls

    flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v,
                           tile_scheduler_metadata, num_splits, softmax_scale=tau, causal=True)

with the scale always explicit: FlashMLA's default 576**-0.5 is wrong for DeepSeek, whose
tau is d_qk**-0.5 times the YaRN factor. The metadata comes from
`get_mla_metadata(cache_seqlens, S * H // 1, 1)` once per case; FlashMLA releases that build
the schedule lazily on the first kernel call accept the same arguments, and that first
call happens in `prepare` too. FlashMLA's causal mask is bottom-right aligned, as ours.

Available only where `flash_mla` imports and the GPU is SM90 (dense BF16 decode is a
Hopper kernel). Served shapes: d_c = 512, d_r = 64 (DeepSeek), bf16 or fp16.

FP8 cache (`kv_dtype` fp8_e4m3): our stored rows are FlashMLA's FP8 layout (656 bytes: 512
e4m3, four fp32 scales, 64 bf16), so the pool is paged from them as they are, viewed as
float8_e4m3fn, and the call adds `is_fp8_kvcache=True`. A flash_mla without that argument,
or a build that refuses FP8 for dense decode, is `unsupported` with its reason; e5m2 is not
a FlashMLA format (`unsupported`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mlabench.backends.latent import first_call_ms
from mlabench.backends.library import accepts, gpu_unavailable, loading, optional_library, required
from mlabench.backends.paged import BLOCK_SIZE, PagedLatentCore, check_deepseek_latent
from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.latent_step import LatentStep

INSTALL_HINT = "build it from source: git clone https://github.com/deepseek-ai/FlashMLA; pip install -v ./FlashMLA"

_load_library = optional_library("flash_mla", INSTALL_HINT)  # (flash_mla, None) or (None, why not)


def flashmla_unavailable(device: torch.device) -> str | None:
    """None where FlashMLA's dense decode can run on `device`, else one short reason."""
    return gpu_unavailable(_load_library, device, "an SM90 (Hopper)", (9,), "dense decode")


class FlashMLACore(PagedLatentCore):
    """A LatentStep -> o_lat through flash_mla_with_kvcache on the page pool."""

    library = "flashmla"
    page_sizes = (BLOCK_SIZE,)  # FlashMLA's kernels read 64-token pages only
    fp8_kv = ("fp8_e4m3",)  # FlashMLA's FP8 cache: 656-byte e4m3 rows

    def __init__(self, module: AttentionVariant, inputs: StepInputs, lib: Any):
        super().__init__(module, inputs, BLOCK_SIZE)
        self.lib = lib
        self.fp8 = bool(module.shape.kv_dtype)
        pool = self.paged.pool.view(torch.float8_e4m3fn) if self.fp8 else self.paged.pool  # FP8: uint8 rows
        self.k_cache = pool.unsqueeze(2)  # (num_pages, 64, 1, D or 656 bytes): FlashMLA's layout, a view
        self.schedule: tuple[Any, Any] | None = None  # (tile_scheduler_metadata, num_splits), once per case

    def attend(self, step: LatentStep) -> Tensor:
        assert self.schedule is not None, "get_mla_metadata runs in prepare"
        tile_scheduler_metadata, num_splits = self.schedule
        o, _lse = self.lib.flash_mla_with_kvcache(
            step.q,  # (B, S, H, D)
            self.k_cache,
            self.paged.block_table,
            step.cache_seqlens,
            step.d_c,  # head_dim_v
            tile_scheduler_metadata,
            num_splits,
            softmax_scale=step.scale,
            causal=True,
            **({"is_fp8_kvcache": True} if self.fp8 else {}),
        )
        return o  # (B, S, H, d_c)


def scheduled_step(module: AttentionVariant, inputs: StepInputs, core: Any,
                   schedule: Callable[[int, int], Any]) -> tuple[Callable[[], Tensor], float]:
    """The step through a FlashMLA `core`, and the milliseconds of its first call after
    `schedule(S, H)` (FlashMLA's get_mla_metadata for S new tokens of H heads) planned it. Both run
    inside `loading`: a build without the kernels or with another API fails there, `unsupported`
    rather than `error` (newer releases schedule lazily, in the first call)."""
    x, start = inputs.x, inputs.start_pos

    def fn() -> Tensor:
        return module(x, start, core)

    def schedule_and_first_call() -> None:
        with loading("flash_mla"):
            core.schedule = schedule(x.shape[1], module.shape.num_heads)
            fn()

    return fn, first_call_ms(schedule_and_first_call, x.device)


@register_backend(
    "flashmla",
    description="DeepSeek FlashMLA dense decode on a paged copy of the latent cache (SM90, bf16)",
    variants=("mla-absorbed",),
    modes=("decode",),
    fused=True,
    unavailable=flashmla_unavailable,
)
def prepare_flashmla(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    check_deepseek_latent(module, "flashmla")
    lib = required(_load_library)
    if module.shape.kv_dtype == "fp8_e4m3" and not accepts(lib.flash_mla_with_kvcache, "is_fp8_kvcache"):
        raise UnsupportedError("this flash_mla has no FP8 KV cache (flash_mla_with_kvcache takes no is_fp8_kvcache)")
    core = FlashMLACore(module, inputs, lib)
    fn, compile_ms = scheduled_step(module, inputs, core, lambda s, h: lib.get_mla_metadata(
        core.cache_seqlens, s * h // 1, 1))  # one KV head
    version = getattr(lib, "__version__", "?")
    native = ",native" if core.native else ""
    return Prepared(fn=fn, detail=f"flashmla:{version},block={BLOCK_SIZE}{native}", compile_ms=compile_ms,
                    core=core.alone,
                    extra_cache_bytes=core.extra_cache_bytes)
