"""`flashmla-sparse`: FlashMLA's token-sparse decode for dsa (DeepSeek-V3.2), on its FP8 cache.

FlashMLA's sparse decode reads DeepSeek's FP8 latent rows (656 bytes: 512 e4m3, four fp32
scales, 64 bf16), exactly what dsa stores as its "kv_cache" with kv_dtype fp8_e4m3, in a pool
of 64-token pages viewed as (num_pages, 64, 1, 656) float8_e4m3fn, and attends, per query
token, only the rows its `indices` (B, S, K) int32 name. The call is

    flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v,
                           tile_scheduler_metadata, num_splits, softmax_scale=tau, causal=False,
                           is_fp8_kvcache=True, indices=slots)

- the scale always explicit (the library's default, 576**-0.5, is not DeepSeek's tau);
- causal False: FlashMLA refuses a causal mask with indices, and dsa's top-k rows already
  exclude every hidden key (-1 entries);
- `slots`: FlashMLA's sparse indices name rows of the whole pool (page * 64 + offset), not
  positions in a sequence, so the adapter maps dsa's per-sequence rows through the block
  table each step (a serving engine does the same after its indexer); -1 stays -1;
- K padded with -1 to a multiple of 64 (the kernel walks indices 64 at a time; DeepSeek's
  topk 2048 needs no padding).

The metadata comes from `get_mla_metadata(cache_seqlens, S * H, 1, H, True, K)` once per case
(releases that schedule lazily take and ignore these arguments and return (schedule, None),
then fix the schedule to the first call's shapes, K included: hence the fixed padded width)
and the first call runs in `prepare` (lazy scheduling, kernel load).

Unsupported: a cache that is not fp8_e4m3 (FlashMLA's sparse decode reads only its FP8
rows), a layout other than 656-byte rows at d_c = 512, d_r = 64, a query not bf16, and a
flash_mla without sparse decode (no `indices` or `topk` argument). Available where
`flash_mla` imports, on SM90 or SM100.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mlabench.backends.flashmla import INSTALL_HINT, FlashMLACore, flashmla_prepared
from mlabench.backends.latent import register_library_backend
from mlabench.backends.library import gpu_unavailable, optional_library, require_keywords, required
from mlabench.backends.paged import BLOCK_SIZE
from mlabench.backends.registry import Prepared, StepInputs
from mlabench.case import Case
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.dsa import DSA
from mlabench.variants.kvquant import latent_row_bytes
from mlabench.variants.latent_step import LatentStep

_load_library = optional_library("flash_mla", INSTALL_HINT)  # (flash_mla, None) or (None, why not)

INDEX_BLOCK = 64  # the kernel reads indices in blocks of this many
ROW_BYTES = latent_row_bytes(512, 64)  # 656: the only row FlashMLA's FP8 cache holds


def sparse_unavailable(device: torch.device) -> str | None:
    """None where FlashMLA's sparse decode can run on `device`, else one short reason."""
    return gpu_unavailable(_load_library, device, "an SM90 or SM100", (9, 10), "sparse decode")


def pool_slots(indices: Tensor, block_table: Tensor, block_size: int, width: int) -> Tensor:
    """(B, S, width) int32 pool rows (page * block_size + offset) of per-sequence rows `indices`
    (B, S, K), K <= width; -1 (none) stays -1 and pads the tail."""
    valid = indices >= 0
    pos = indices.clamp_min(0).long()
    pages = torch.gather(block_table.long(), 1, (pos // block_size).flatten(1)).view_as(pos)
    slots = torch.where(valid, pages * block_size + pos % block_size, -1).to(torch.int32)
    return F.pad(slots, (0, width - slots.shape[-1]), value=-1)


class FlashMLASparseCore(FlashMLACore):
    """A dsa LatentStep (with indices) -> o_lat through FlashMLA's sparse FP8 decode."""

    library = "flashmla-sparse"
    serves = (DSA,)
    reads_latent_beside_others = True  # the kernel reads the latent rows, never the indexer key
    causal = False  # FlashMLA refuses a causal mask with indices; dsa's rows already exclude hidden keys

    def __init__(self, module: AttentionVariant, inputs: StepInputs, lib: Any):
        super().__init__(module, inputs, lib)
        pool = self.paged.pool
        if pool.dtype != torch.uint8 or pool.shape[-1] != ROW_BYTES:
            raise UnsupportedError(f"flashmla-sparse reads {ROW_BYTES}-byte FP8 latent rows, not a cache of "
                                   f"{pool.shape[-1]} {pool.dtype} per token")
        k = min(module.shape.topk, int(self.cache_seqlens.max()))  # dsa's K this step
        self.topk = math.ceil(k / INDEX_BLOCK) * INDEX_BLOCK

    def plan(self, s: int, h: int) -> None:
        self.schedule = self.lib.get_mla_metadata(self.cache_seqlens, s * h, 1, h, is_fp8_kvcache=True,
                                                  topk=self.topk)

    def check(self, step: LatentStep) -> None:
        if step.indices is None or step.kv_dtype != "fp8_e4m3":
            raise UnsupportedError("flashmla-sparse needs a dsa decode step over its fp8_e4m3 latent rows")
        if step.indices.shape[-1] > self.topk:
            raise RuntimeError(f"dsa chose {step.indices.shape[-1]} rows, more than the {self.topk} planned")

    def call_options(self, step: LatentStep) -> dict[str, Any]:
        assert step.indices is not None, "checked on the first step"
        slots = pool_slots(step.indices, self.paged.block_table, self.block_size, self.topk)
        return {"is_fp8_kvcache": True, "indices": slots}


def check_sparse_case(module: AttentionVariant) -> None:
    """What FlashMLA's sparse decode reads: dsa's DeepSeek FP8 e4m3 latent rows and a bf16 query."""
    if not isinstance(module, DSA):
        raise UnsupportedError(f"flashmla-sparse serves dsa only, not {module.name}")
    sh = module.shape
    if (sh.kv_lora_rank, sh.rope_head_dim) != (512, 64):
        raise UnsupportedError("flashmla-sparse reads kv_lora_rank 512 and rope_head_dim 64 (656-byte FP8 rows); "
                               f"got {sh.kv_lora_rank} and {sh.rope_head_dim}")
    if sh.kv_dtype != "fp8_e4m3":
        raise UnsupportedError("flashmla-sparse: FlashMLA's sparse decode reads an fp8_e4m3 latent cache only "
                               f"(kv_dtype fp8_e4m3), not {sh.kv_dtype or sh.dtype}")
    if module.weight_dtype != torch.bfloat16:
        raise UnsupportedError(f"flashmla-sparse takes a bf16 query, not {module.weight_dtype}")


@register_library_backend(FlashMLASparseCore, unavailable=sparse_unavailable,
                          description="DeepSeek FlashMLA token-sparse decode for dsa on its FP8 latent rows "
                                      "(SM90/SM100)")
def prepare_flashmla_sparse(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    check_sparse_case(module)
    lib = required(_load_library)
    require_keywords(lib, "this flash_mla has no sparse decode", flash_mla_with_kvcache="indices",
                     get_mla_metadata="topk")
    core = FlashMLASparseCore(module, inputs, lib)
    return flashmla_prepared(module, inputs, core, f"block={BLOCK_SIZE},topk={core.topk}")
