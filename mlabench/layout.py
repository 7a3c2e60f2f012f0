"""Cache layouts: the `cache_layout` axis, contiguous (the default) or paged.

    contiguous      one (B, T_max, ...) tensor per cache: every sequence owns T_max slots
    paged           pages of 64 tokens (FlashMLA's size), as `paged:64`
    paged:16        pages of 16 tokens

A paged cache is a pool of (num_pages, page_size, ...) per cache tensor plus one block
table (B, max pages) of int32 page ids: sequence b holds ceil(L_b / page_size) whole pages,
shuffled over the pool as a serving engine's allocator leaves them after some churn, so
no kernel gets adjacent pages for free. KV bytes are those whole pages.

Page sizes are powers of two from 1 to 1024: every kernel tile here (our Triton kernel's
block_n, FlashInfer's, FlashMLA's 64) is a power of two, so a page and a tile always divide
one another and no tile straddles a page boundary mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlabench.errors import UsageError

LAYOUTS = ("contiguous", "paged")
DEFAULT_PAGE_SIZE = 64
MAX_PAGE_SIZE = 1024


@dataclass(frozen=True)
class CacheLayout:
    page_size: int = 0  # 0: contiguous

    @property
    def paged(self) -> bool:
        return self.page_size > 0

    @property
    def text(self) -> str:
        """Canonical text, the `cache_layout` key column ('' for contiguous, so old keys stay the same)."""
        return f"paged:{self.page_size}" if self.paged else ""


def parse_layout(text: object) -> CacheLayout:
    """'contiguous', 'paged', 'paged:16' -> CacheLayout; UsageError naming the problem otherwise."""
    if not isinstance(text, str):
        raise UsageError(f"cache_layout: must be a name, got {text!r} (contiguous, paged or paged:PAGE_SIZE)")
    name, sep, size = text.strip().lower().partition(":")
    if name == "contiguous" and not sep or name == "" and not sep:
        return CacheLayout()
    if name != "paged":
        raise UsageError(f"cache_layout: unknown layout {text!r} (choose from contiguous, paged, paged:PAGE_SIZE)")
    if not sep:
        return CacheLayout(DEFAULT_PAGE_SIZE)
    if not size.strip().isdigit():
        raise UsageError(f"cache_layout: page size in {text!r} must be a positive integer")
    page = int(size)
    if not 1 <= page <= MAX_PAGE_SIZE:
        raise UsageError(f"cache_layout: page size {page} must be between 1 and {MAX_PAGE_SIZE}")
    if page & (page - 1):
        raise UsageError(f"cache_layout: page size {page} does not divide the kernels' power-of-two tiles "
                         "(use a power of two: 16, 64, ...)")
    return CacheLayout(page)


def pages_for(lengths: tuple[int, ...] | list[int], page_size: int) -> list[int]:
    """Whole pages each sequence needs."""
    return [-(-n // page_size) for n in lengths]
