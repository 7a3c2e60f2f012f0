"""Paged copies of the contiguous latent cache, for libraries that read a page pool (FlashMLA, FlashInfer).

Our latent cache is one tensor (B_max, T_max, D), D = d_c + d_r. Paged kernels read a pool
of fixed-size pages (num_pages, block_size, D) and a block table: row b lists, in order,
the pages holding sequence b, so token p of sequence b lives at
pool[block_table[b, p // block_size], p % block_size]. These helpers are plain torch, so
the layout logic is tested on any device against the contiguous cache it mirrors.

The pool is built once in `prepare`; the timed step writes only its own new rows into it
(`write_rows`, with slot indices precomputed by `slot_indices`), as a serving engine does.
`PagedLatentCore` is that for a fused latent core (latent.py): FlashMLA's and FlashInfer's
cores subclass it and only call their library in `attend`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mlabench.backends.latent import LatentCore
from mlabench.backends.registry import StepInputs
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.latent_step import LatentStep

BLOCK_SIZE = 64  # FlashMLA's only page size; FlashInfer takes any and gets the same pages
_LIBRARY_DTYPES = (torch.bfloat16, torch.float16)


def block_table_for(batch: int, seq_len: int, block_size: int = BLOCK_SIZE, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
    """(B, ceil(seq_len / block_size)) int32 page ids.

    Pages are numbered sequence by sequence; a generator shuffles them, as a serving
    engine's allocator would after some churn (kernels must not assume adjacent pages).
    """
    if batch < 1 or seq_len < 1 or block_size < 1:
        raise ValueError(f"batch, seq_len and block_size must be >= 1, got {batch}, {seq_len}, {block_size}")
    blocks = math.ceil(seq_len / block_size)
    pages = torch.arange(batch * blocks, dtype=torch.int32)
    if generator is not None:
        pages = pages[torch.randperm(batch * blocks, generator=generator)]
    return pages.view(batch, blocks).to(device)


@dataclass(frozen=True)
class PagedCache:
    """A page pool holding the first `seq_len` tokens of each of B sequences."""

    pool: Tensor  # (num_pages, block_size, D), contiguous
    block_table: Tensor  # (B, blocks per sequence) int32, on the pool's device
    seq_len: int  # the longest sequence's tokens
    lengths: tuple[int, ...] | None = None  # ragged: each sequence's tokens (None: all seq_len)

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return self.lengths if self.lengths is not None else (self.seq_len,) * self.block_table.shape[0]

    @property
    def block_size(self) -> int:
        return self.pool.shape[1]


def to_pages(cache: Tensor, seq_len: int, block_table: Tensor, block_size: int = BLOCK_SIZE,
             fill: float = 0.0) -> PagedCache:
    """Copy cache[:B, :seq_len] (cache (B_max, T_max, D)) into a new pool laid out by `block_table`.

    Slots past seq_len in each sequence's last page hold `fill` (tests use NaN, so a kernel
    that reads past a sequence's end shows it).
    """
    b, blocks = _check_table(block_table, seq_len, block_size)
    if b > cache.shape[0] or seq_len > cache.shape[1]:
        raise ValueError(f"cache {tuple(cache.shape)} holds fewer than {b} sequences of {seq_len} tokens")
    d = cache.shape[-1]
    table = block_table.to(cache.device)
    padded = cache.new_full((b, blocks * block_size, d), fill)  # (B, blocks * block_size, D)
    padded[:, :seq_len] = cache[:b, :seq_len]
    pool = cache.new_full((int(table.max()) + 1, block_size, d), fill)  # (num_pages, block_size, D)
    pool[table.long().flatten()] = padded.view(b * blocks, block_size, d)
    return PagedCache(pool, table, seq_len)


def from_pages(paged: PagedCache) -> Tensor:
    """The contiguous (B, seq_len, D) view of a paged cache, gathered through its block table (a copy)."""
    pages = paged.pool[paged.block_table.long()]  # (B, blocks, block_size, D)
    return pages.flatten(1, 2)[:, : paged.seq_len]


def slot_indices(block_table: Tensor, start: int, stop: int, block_size: int = BLOCK_SIZE) -> Tensor:
    """(B, stop - start) int64 flat slot ids in pool.view(-1, D) of tokens [start, stop) of each sequence."""
    if not 0 <= start < stop <= block_table.shape[1] * block_size:
        raise ValueError(f"tokens [{start}, {stop}) do not fit {block_table.shape[1]} pages of {block_size}")
    pos = torch.arange(start, stop, device=block_table.device)
    return block_table.long()[:, pos // block_size] * block_size + pos % block_size


def write_rows(pool: Tensor, slots: Tensor, rows: Tensor) -> None:
    """pool slots[b, s] <- rows[b, s]; pool (num_pages, block_size, D), slots (B, S), rows (B, S, D)."""
    d = pool.shape[-1]
    pool.view(-1, d).index_copy_(0, slots.flatten(), rows.reshape(-1, d))


def pages_for_step(cache: Tensor, batch: int, start: int, stop: int,
                   block_size: int = BLOCK_SIZE) -> tuple[PagedCache, Tensor]:
    """A paged copy of tokens [0, stop) of `batch` sequences and the slots of the step's new tokens [start, stop).

    Returns (paged cache, slots (B, stop - start)); the step writes its rows with `write_rows`.
    """
    table = block_table_for(batch, stop, block_size, device=cache.device)
    paged = to_pages(cache, stop, table, block_size)
    return paged, slot_indices(paged.block_table, start, stop, block_size)


class PagedLatentCore(LatentCore):
    """A fused latent core that reads a page pool. When the case's cache is itself paged
    (cache_layout = paged) the core reads that pool and block table natively: no copy. Else
    the pool is a copy of the contiguous cache built here, once, and inside a step the core
    first mirrors the step's new latent rows into it. `page_sizes`: the pages the library reads."""

    page_sizes: tuple[int, ...] | None = None  # None: any

    def __init__(self, module: AttentionVariant, inputs: StepInputs, block_size: int = BLOCK_SIZE):
        super().__init__(module, inputs)
        b, s = inputs.x.shape[:2]
        start = inputs.start_pos
        cmap = module.cache_map
        self.native = cmap is not None and cmap.page_size > 0
        if self.native:
            if self.page_sizes is not None and cmap.page_size not in self.page_sizes:
                raise UnsupportedError(f"{self.library} reads pages of {', '.join(map(str, self.page_sizes))} "
                                       f"tokens, not {cmap.page_size}")
            lengths = tuple(int(n) for n in self.cache_seqlens.tolist())  # once, outside the timed calls
            self.paged = PagedCache(module.cache_tensors()["kv_cache"], cmap.block_table[:b], max(lengths), lengths)
            self.slots = None
        elif cmap is not None and cmap.ragged:
            raise UnsupportedError(f"{self.library} takes a ragged batch on its own paged layout: "
                                   "use cache_layout = paged")
        else:
            self.paged, self.slots = pages_for_step(module.cache_tensors()["kv_cache"], b, start, start + s,
                                                    block_size)

    @property
    def block_size(self) -> int:
        return self.paged.block_size

    @property
    def extra_cache_bytes(self) -> int | None:
        """The second copy of the cache the step needs: the pool and its block table (none when native)."""
        if self.native:
            return None
        return self.paged.pool.nbytes + self.paged.block_table.nbytes

    def step(self, step: LatentStep) -> Tensor:
        if not self.native:
            # The variant wrote this step's rows into our contiguous cache; the kernel reads the pool.
            write_rows(self.paged.pool, self.slots, step.new_rows)  # (B, S, D)
        return self.attend(step)


def check_deepseek_latent(module: AttentionVariant, library: str) -> None:
    """FlashMLA and FlashInfer's MLA kernels are built for DeepSeek's latent: d_c = 512, d_r = 64, 16-bit."""
    if module.name != "mla-absorbed":
        raise UnsupportedError(f"{library} serves mla-absorbed only, not {module.name}")
    sh = module.shape
    if (sh.kv_lora_rank, sh.rope_head_dim) != (512, 64):
        raise UnsupportedError(
            f"{library} kernels take kv_lora_rank 512 and rope_head_dim 64 (head dim 576, v 512); "
            f"got {sh.kv_lora_rank} and {sh.rope_head_dim}"
        )
    if module.weight_dtype not in _LIBRARY_DTYPES:
        raise UnsupportedError(f"{library} takes bf16 or fp16, not {module.weight_dtype}")


def _check_table(block_table: Tensor, seq_len: int, block_size: int) -> tuple[int, int]:
    if block_table.dim() != 2 or block_table.dtype != torch.int32:
        raise ValueError(f"block_table must be a 2-D int32 tensor, got {block_table.dtype} {tuple(block_table.shape)}")
    b, blocks = block_table.shape
    if blocks != math.ceil(seq_len / block_size):
        raise ValueError(f"{seq_len} tokens need {math.ceil(seq_len / block_size)} pages of {block_size}, "
                         f"the table has {blocks}")
    flat = block_table.flatten()
    if int(flat.min()) < 0 or flat.unique().numel() != flat.numel():
        raise ValueError("block_table page ids must be distinct and >= 0")
    return b, blocks
