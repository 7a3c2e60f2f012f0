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

from typing import Any

import torch
from torch import Tensor

from mlabench.backends.latent import library_prepared, register_library_backend
from mlabench.backends.library import gpu_unavailable, optional_library, require_keywords, required
from mlabench.backends.paged import BLOCK_SIZE, PagedLatentCore, check_deepseek_latent
from mlabench.backends.registry import Prepared, StepInputs
from mlabench.case import Case
from mlabench.variants.base import AttentionVariant
from mlabench.variants.latent_step import LatentStep

INSTALL_HINT = "build it from source: git clone https://github.com/deepseek-ai/FlashMLA; pip install -v ./FlashMLA"

_load_library = optional_library("flash_mla", INSTALL_HINT)  # (flash_mla, None) or (None, why not)


def flashmla_unavailable(device: torch.device) -> str | None:
    """None where FlashMLA's dense decode can run on `device`, else one short reason."""
    return gpu_unavailable(_load_library, device, "an SM90 (Hopper)", (9,), "dense decode")


class FlashMLACore(PagedLatentCore):
    """A LatentStep -> o_lat through flash_mla_with_kvcache on the page pool, on the schedule
    `get_mla_metadata` planned in prepare. FlashMLA's sparse decode subclasses it."""

    library = "flashmla"
    page_sizes = (BLOCK_SIZE,)  # FlashMLA's kernels read 64-token pages only
    fp8_kv = ("fp8_e4m3",)  # FlashMLA's FP8 cache: 656-byte e4m3 rows
    causal = True  # bottom-right aligned, as ours

    def __init__(self, module: AttentionVariant, inputs: StepInputs, lib: Any):
        super().__init__(module, inputs, BLOCK_SIZE)
        self.lib = lib
        self.fp8 = bool(module.shape.kv_dtype)
        pool = self.paged.pool.view(torch.float8_e4m3fn) if self.fp8 else self.paged.pool  # FP8: uint8 rows
        self.k_cache = pool.unsqueeze(2)  # (num_pages, 64, 1, D or 656 bytes): FlashMLA's layout, a view
        self.schedule: tuple[Any, Any] | None = None  # (tile_scheduler_metadata, num_splits), once per case

    def plan(self, s: int, h: int) -> None:
        """FlashMLA's schedule for S new tokens of H query heads, once per case."""
        self.schedule = self.lib.get_mla_metadata(self.cache_seqlens, s * h // 1, 1)  # one KV head

    def call_options(self, step: LatentStep) -> dict[str, Any]:
        """Keywords beyond the dense call's: the FP8 flag when the pool holds FP8 rows."""
        return {"is_fp8_kvcache": True} if self.fp8 else {}

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
            causal=self.causal,
            **self.call_options(step),
        )
        return o  # (B, S, H, d_c)


def flashmla_prepared(module: AttentionVariant, inputs: StepInputs, core: FlashMLACore, detail: str) -> Prepared:
    """The step through a FlashMLA `core`, whose first call (timed as compile_ms) comes after the
    core planned its schedule (newer releases schedule lazily, in that first call)."""
    x, start = inputs.x, inputs.start_pos
    return library_prepared("flash_mla", core.lib, core, lambda: module(x, start, core), detail,
                            plan=lambda: core.plan(x.shape[1], module.shape.num_heads))


@register_library_backend(FlashMLACore, unavailable=flashmla_unavailable,
                          description="DeepSeek FlashMLA dense decode on a paged copy of the latent cache (SM90, bf16)")
def prepare_flashmla(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    check_deepseek_latent(module, "flashmla")
    lib = required(_load_library)
    if module.shape.kv_dtype == "fp8_e4m3":
        require_keywords(lib, "this flash_mla has no FP8 KV cache", flash_mla_with_kvcache="is_fp8_kvcache")
    core = FlashMLACore(module, inputs, lib)
    return flashmla_prepared(module, inputs, core, f"block={BLOCK_SIZE}" + (",native" if core.native else ""))
