"""What a fused latent kernel reads: the absorbed query and the latent cache tensor itself.

MLA's absorbed attention, GLA's and DSA's hand fused kernels (triton, FlashMLA, FlashInfer)
a `LatentStep` instead of the core's generic (q, k, v) views: the cache tensor in place (or
its page pool), the step's position and lengths, and how the rows are stored. The variants
build it (`latent_step`); the latent backends only read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LatentStep:
    """One absorbed step as a fused latent kernel reads it: query rows q[b] attend, causal and
    bottom-right aligned, over cache[b, :end], with V the first d_c columns of the same rows;
    the kernel returns o_lat (B, S, H, d_c)."""

    q: Tensor  # (B, S, H, d_c + d_r): q' = [q_nope W_UK, q_pe]
    cache: Tensor  # (B_max, T_max, d_c + d_r): the module's kv_cache tensor itself, never a copy
    batch: int  # B
    start: int  # position of the step's first new token
    new_tokens: int  # S
    d_c: int  # V's width
    scale: float  # tau, always explicit: DeepSeek's is d_qk**-0.5 times the YaRN factor, not D**-0.5
    cache_seqlens: Tensor  # (B,) int32, `end` for every sequence; allocated once per case by the caller
    # A paged cache: `cache` is then the module's page pool (num_pages, page_size, d_c + d_r) and
    # sequence b's token p lives at cache[block_table[b, p // page_size], p % page_size].
    block_table: Tensor | None = None  # (B, max pages) int32
    # "" when `cache` holds values in q's dtype; else the FP8 format of DeepSeek's byte rows in a
    # uint8 cache (B_max, T_max, row bytes): [d_c FP8 | fp32 scale per 128 | d_r bf16] (kvquant.py)
    kv_dtype: str = ""
    # Grouped Latent Attention: rows are [c_1 .. c_G (d_c each), k_pe] and query head h reads
    # c_{h // (H/G)}; 1 for MLA.
    latent_heads: int = 1
    indices: Tensor | None = None  # (B, S, K) int32 cache rows per query token, -1 none (dsa); None: dense

    @property
    def page_size(self) -> int:
        return self.cache.shape[1] if self.block_table is not None else 0

    @property
    def end(self) -> int:
        """Tokens each sequence holds after this step (T)."""
        return self.start + self.new_tokens

    @property
    def kv(self) -> Tensor:
        """(B, T, d_c + d_r) view of the cache, its strides kept: what the step attends over
        (a paged step: the pool itself)."""
        return self.cache if self.block_table is not None else self.cache[: self.batch, : self.end]

    @property
    def new_rows(self) -> Tensor:
        """(B, S, d_c + d_r) view of this step's cache rows, already written by the variant."""
        return self.cache[: self.batch, self.start : self.end]
