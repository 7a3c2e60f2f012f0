"""Where each sequence's tokens live in a variant's cache: ragged lengths and paged pools.

A variant's cache tensors are (B, T_max, ...) when contiguous. A `CacheMap` adds the two
serving layouts on top, for every variant alike:

- ragged lengths: sequence b holds `lengths[b]` tokens after the step (T_max = the
  longest). The step's S new tokens of sequence b sit at [lengths[b] - S, lengths[b]),
  shifted with `start_pos` like the longest sequence's: start_pos - (T_max - lengths[b]).
- paged: each cache tensor is a pool (num_pages, page_size, ...); the block table (B,
  max pages) int32 lists sequence b's pages in order, token p at pool[table[b, p // P],
  p % P]. Pages are shuffled (seeded), and each sequence has only its whole pages, so the
  pool's bytes are the sum over real lengths rounded up to pages. Unused table entries
  (a short sequence's tail) hold page 0: gathered, never attended.

Eager paths read a paged cache by gathering it into a contiguous (B, T, ...) copy (what a
gather-based fallback costs); fused kernels read the pool through the block table.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mlabench.layout import pages_for
from mlabench.variants.fill import random_fill


@dataclass
class CacheMap:
    batch: int
    max_seq_len: int
    device: torch.device
    lengths: tuple[int, ...] | None = None  # None: every sequence holds max_seq_len slots
    page_size: int = 0  # 0: contiguous
    shuffle_seed: int = 0
    block_table: Tensor | None = field(default=None, init=False)  # (B, max pages) int32
    _table: Tensor | None = field(default=None, init=False)  # the same, int64, for indexing
    _positions: dict[tuple[int, int, int], Tensor] = field(default_factory=dict, init=False)
    _write_index: dict[tuple[int, int, int], object] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.lengths is not None:
            self.lengths = tuple(int(n) for n in self.lengths)
            if len(self.lengths) != self.batch or min(self.lengths) < 1 or max(self.lengths) > self.max_seq_len:
                raise ValueError(f"lengths {self.lengths} do not fit {self.batch} sequences of "
                                 f"{self.max_seq_len} slots")
        if self.page_size:
            pages = pages_for(self.slots, self.page_size)
            perm = torch.randperm(sum(pages), generator=torch.Generator().manual_seed(self.shuffle_seed))
            table = torch.zeros(self.batch, max(pages), dtype=torch.int32)
            first = 0
            for b, n in enumerate(pages):
                table[b, :n] = perm[first:first + n]
                first += n
            self.block_table = table.to(self.device)
            self._table = self.block_table.long()

    @property
    def ragged(self) -> bool:
        return self.lengths is not None

    @property
    def plain(self) -> bool:
        """Contiguous and uniform: a step's rows are one (batch, token) slice of each tensor."""
        return self.lengths is None and not self.page_size

    @property
    def slots(self) -> tuple[int, ...]:
        """Tokens each sequence holds (after the step)."""
        return self.lengths if self.lengths is not None else (self.max_seq_len,) * self.batch

    @property
    def num_pages(self) -> int:
        return sum(pages_for(self.slots, self.page_size)) if self.page_size else 0

    def tensor_shape(self, contiguous: tuple[int, ...]) -> tuple[int, ...]:
        """The shape a cache tensor of contiguous shape (B, T_max, ...) takes in this layout."""
        return (self.num_pages, self.page_size, *contiguous[2:]) if self.page_size else contiguous

    # --- positions --------------------------------------------------------------------------
    def positions(self, b: int, start_pos: int, s: int) -> Tensor | None:
        """(b, S) int64 absolute positions of the step's tokens per sequence; None when every
        sequence's start is start_pos (uniform). Cached: the timed step builds no tensor."""
        if self.lengths is None:
            return None
        key = (b, start_pos, s)
        if key not in self._positions:
            shift = torch.tensor(self.lengths[:b], dtype=torch.int64) - self.max_seq_len  # (b,) <= 0
            pos = (start_pos + shift)[:, None] + torch.arange(s)[None, :]
            if int(pos.min()) < 0:
                raise ValueError(f"a step of {s} tokens at {start_pos} starts before position 0 of a sequence "
                                 f"of {min(self.lengths[:b])} tokens")
            self._positions[key] = pos.to(self.device)
        return self._positions[key]

    def prepare_step(self, b: int, start_pos: int, s: int) -> object:
        """Build (once) the index tensors a step of s tokens at start_pos writes through, so the
        timed calls build none, and a compiled step finds them ready (no data-dependent checks
        inside its graph). Returns the write index: flat slots (paged) or (sequence, position)."""
        key = (b, start_pos, s)
        if key not in self._write_index:
            pos = self.positions(b, start_pos, s)
            if pos is None:
                pos = torch.arange(start_pos, start_pos + s, device=self.device).expand(b, s)
            self._write_index[key] = (self._slots(pos) if self.page_size
                                      else (torch.arange(b, device=self.device)[:, None], pos))
        return self._write_index[key]

    def step_lengths(self, b: int, start_pos: int, s: int) -> Tensor | None:
        """(b,) int64 tokens each sequence holds after the step (the cores' `lengths`); None uniform."""
        pos = self.positions(b, start_pos, s)
        return None if pos is None else pos[:, -1] + 1

    def _slots(self, pos: Tensor, rows: Tensor | None = None) -> Tensor:
        """Flat slot ids in pool.view(-1, ...) of positions pos (b, S) of sequences `rows` (default 0..b-1)."""
        table = self._table if rows is None else self._table.index_select(0, rows)
        page = torch.gather(table, 1, pos // self.page_size)
        return page * self.page_size + pos % self.page_size

    # --- reads and writes ---------------------------------------------------------------------
    def write(self, cache: Tensor, start_pos: int, rows: Tensor) -> None:
        """Write the step's new rows (b, S, ...) at their positions."""
        b, s = rows.shape[:2]
        if self.lengths is None and not self.page_size:
            cache[:b, start_pos:start_pos + s] = rows
            return
        index = self.prepare_step(b, start_pos, s)
        if self.page_size:
            cache.view(-1, *cache.shape[2:])[index] = rows  # (b, S) flat slots
        else:
            cache[index] = rows  # (sequence, position) pairs

    def read(self, cache: Tensor, b: int, end: int) -> Tensor:
        """Slots [0, end) of the first b sequences as (b, end, ...): a view when contiguous, a
        gathered copy when paged."""
        if not self.page_size:
            return cache[:b, :end]
        pages = math.ceil(end / self.page_size)
        return cache[self._table[:b, :pages]].flatten(1, 2)[:, :end]

    def gather(self, cache: Tensor, rows: list[int]) -> Tensor:
        """Sequences `rows` as a contiguous (len(rows), T_max, ...) copy."""
        index = torch.tensor(rows, device=cache.device)
        if not self.page_size:
            return cache.index_select(0, index)
        return cache[self._table.index_select(0, index)].flatten(1, 2)[:, :self.max_seq_len]

    def context_slots(self, length: int) -> list[int]:
        """Slots of each sequence a context fill of the longest one's first `length` covers:
        a sequence of slots[b] tokens is (T_max - slots[b]) shorter everywhere."""
        return [length - (self.max_seq_len - held) for held in self.slots]

    def write_sequence(self, cache: Tensor, b: int, rows: Tensor) -> None:
        """Write rows (n, ...) at slots [0, n) of sequence b."""
        n = rows.shape[0]
        if not self.page_size:
            cache[b, :n] = rows
            return
        pos = torch.arange(n, device=cache.device)[None, :]
        slots = self._slots(pos, torch.tensor([b], device=cache.device))[0]
        cache.view(-1, *cache.shape[2:])[slots] = rows

    @torch.no_grad()
    def fill(self, cache: Tensor, name: str, length: int, seed: int) -> None:
        """Fill each sequence's context, slots [0, length - (T_max - slots[b])), with the values the
        contiguous uniform fill gives the same (sequence, slot): element indices b * length * row
        + offset, so contiguous and paged caches of one case hold the same logical values."""
        stream = zlib.crc32(name.encode())  # a separate stream per cache tensor
        row_shape = cache.shape[2:]
        row = math.prod(row_shape)
        for b, n in enumerate(self.context_slots(length)):
            if n <= 0:
                continue
            if not self.page_size:
                random_fill(cache[b, :n].view(-1), seed, stream, first_index=b * length * row)
                continue
            values = cache.new_empty(n * row)
            random_fill(values, seed, stream, first_index=b * length * row)
            self.write_sequence(cache, b, values.view(n, *row_shape))
