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
"""

from __future__ import annotations

import functools
import importlib
import time
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from mlabench.backends.library import LoadFailure, loading
from mlabench.backends.paged import BLOCK_SIZE, PagedCache, check_deepseek_latent, pages_for_step, write_rows
from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant

INSTALL_HINT = "build it from source: git clone https://github.com/deepseek-ai/FlashMLA; pip install -v ./FlashMLA"


@functools.cache
def _load_library() -> tuple[ModuleType | None, str | None]:
    """(flash_mla, None) or (None, why not); imported once per process."""
    try:
        return importlib.import_module("flash_mla"), None
    except ImportError:
        return None, f"flash_mla is not installed ({INSTALL_HINT})"
    except Exception as err:  # a broken build (CUDA/ABI mismatch) raises OSError, RuntimeError, ...
        return None, LoadFailure(f"flash_mla failed to import: {type(err).__name__}: {err}")


def flashmla_unavailable(device: torch.device) -> str | None:
    """None where FlashMLA's dense decode can run on `device`, else one short reason."""
    _, reason = _load_library()
    if reason is not None:
        return reason
    device = torch.device(device)
    if device.type != "cuda":
        return f"needs an SM90 (Hopper) CUDA GPU, not {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"needs an SM90 (Hopper) GPU for dense decode; this GPU is sm_{major}{minor}"
    return None


class FlashMLACore:
    """core(q', latent, latent[..., :d_c], tau, True) -> o_lat through flash_mla_with_kvcache on the page pool."""

    def __init__(self, lib: Any, paged: PagedCache, slots: Tensor, cache_seqlens: Tensor, head_dim_v: int,
                 tile_scheduler_metadata: Any, num_splits: Any):
        self.lib = lib
        self.paged = paged
        self.k_cache = paged.pool.unsqueeze(2)  # (num_pages, 64, 1, D): FlashMLA's layout, a view
        self.slots = slots  # (B, S) flat pool slots of this step's tokens
        self.cache_seqlens = cache_seqlens  # (B,) int32
        self.head_dim_v = head_dim_v
        self.tile_scheduler_metadata = tile_scheduler_metadata
        self.num_splits = num_splits

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> Tensor:
        s, t = q.shape[1], k.shape[1]
        # The variant wrote this step's latent rows into our contiguous cache (k is a view of
        # it); mirror them into the pool the kernel reads.
        write_rows(self.paged.pool, self.slots, k[:, t - s:, 0])  # (B, S, D)
        return self.attend(q, k, v, scale, causal)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> Tensor:
        """The library kernel alone on the pool (scope "core"): the pool already holds the
        step's rows, mirrored by the step `prepare` ran once."""
        o, _lse = self.lib.flash_mla_with_kvcache(
            q,  # (B, S, H, D)
            self.k_cache,
            self.paged.block_table,
            self.cache_seqlens,
            self.head_dim_v,
            self.tile_scheduler_metadata,
            self.num_splits,
            softmax_scale=scale,
            causal=causal,
        )
        return o  # (B, S, H, d_c)


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
    lib, reason = _load_library()
    if lib is None:
        raise UnsupportedError(str(reason))
    x, start = inputs.x, inputs.start_pos
    b, s = x.shape[:2]
    h, d_c = module.shape.num_heads, module.shape.kv_lora_rank
    paged, slots = pages_for_step(module.cache_tensors()["kv_cache"], b, start, start + s, BLOCK_SIZE)
    cache_seqlens = torch.full((b,), start + s, dtype=torch.int32, device=x.device)

    t0 = time.perf_counter()
    # Metadata, first call (lazy scheduling in newer releases, kernel load): where a build
    # without dense SM90 kernels or a different API fails, which is `unsupported`, not `error`.
    with loading("flash_mla"):
        tile_md, num_splits = lib.get_mla_metadata(cache_seqlens, s * h // 1, 1)  # one KV head
        core = FlashMLACore(lib, paged, slots, cache_seqlens, d_c, tile_md, num_splits)

        def fn() -> Tensor:
            return module(x, start, core)

        fn()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    compile_ms = (time.perf_counter() - t0) * 1e3
    version = getattr(lib, "__version__", "?")
    return Prepared(fn=fn, detail=f"flashmla:{version},block={BLOCK_SIZE}", compile_ms=compile_ms, core=core.attend,
                    extra_cache_bytes=paged.pool.nbytes + paged.block_table.nbytes)
