"""The KV cache a variant holds: allocation, random fill, reads and writes, the float64 copy.

`CacheStore` is the half of every variant that keeps its cache: preallocated tensors (zeros)
for `batch` sequences of `max_seq_len` slots, laid out by a `CacheMap` (contiguous, ragged or
paged) and stored as is or in FP8 (`kvquant`). A variant's `core_inputs` write and read the
cache only through `_write`, `_read` and `_rope_at`, so every layout is served the same way.
`reference` copies the module to float64 with the same cache contents, for accuracy checks.
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape
from mlabench.errors import UnsupportedError
from mlabench.variants import kvquant
from mlabench.variants.cache_map import CacheMap
from mlabench.variants.fill import random_fill


class CacheStore(nn.Module):
    """The cache of one attention layer; `AttentionVariant` builds on it."""

    name: ClassVar[str]
    shape: AttentionShape

    def __init__(self) -> None:
        super().__init__()
        self.max_seq_len = 0
        self.batch = 0
        # Plain attributes, not buffers: the cache stays out of state_dict, so a real
        # checkpoint's attention weights load with load_state_dict as they are.
        self._cache: dict[str, Tensor] = {}
        self._prepared_len = 0
        self.cache_map: CacheMap | None = None  # ragged lengths, paged pools (cache_map.py)
        # Set by a fused kernel that reads a page pool itself: the core then gets the pool, not a gather.
        self.read_pages_in_core = False
        # How the cache is stored (None: in the weights' dtype); the float64 reference has none.
        self.kv_store: kvquant.KVFormat | kvquant.RoundTrip | None = None
        self._filled: tuple[int, int] | None = None  # (seed, length) of the last random fill

    @property
    def weight_device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def prepare_length(self, max_seq_len: int) -> None:
        """Build what depends on the context length but is not KV cache (RoPE tables, Linformer's
        [k, n] projections). `allocate_cache` calls it; the runner calls it first so that the
        allocation it measures holds the cache tensors and nothing else."""
        if self._prepared_len != max_seq_len:
            self._build_length_state(max_seq_len)
            self._prepared_len = max_seq_len

    def _build_length_state(self, max_seq_len: int) -> None:
        """Subclasses with length-dependent state override this."""

    @classmethod
    def no_serving_layouts(cls, sh: AttentionShape) -> str:
        """Why this module takes no ragged batch or paged cache ('' when it does); the variant answers."""
        return ""

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every cache tensor, in the weights' dtype."""
        raise NotImplementedError

    def allocate_cache(self, batch: int, max_seq_len: int, *, lengths: tuple[int, ...] | None = None,
                       page_size: int = 0, shuffle_seed: int = 0) -> None:
        """Preallocate the KV cache for `batch` sequences of `max_seq_len` slots (zeros); with
        `lengths`, sequence b holds lengths[b] tokens (ragged); with `page_size`, every cache
        tensor is a page pool of whole pages over those lengths (cache_map.py)."""
        self.prepare_length(max_seq_len)
        self.batch, self.max_seq_len = batch, max_seq_len
        self._cache = {}  # drop the old cache before the new one exists: never two at once
        if lengths is not None or page_size:
            why = self.no_serving_layouts(self.shape)
            if why:
                raise UnsupportedError(f"{self.name} {why}: no ragged or paged cache")
        self.cache_map = CacheMap(batch, max_seq_len, self.weight_device, lengths, page_size, shuffle_seed)
        self._new_cache(**{name: self.cache_map.tensor_shape(dims)
                           for name, dims in self.cache_shapes(batch, max_seq_len).items()})

    def cache_tensors(self) -> dict[str, Tensor]:
        """The tensors that make up the KV cache (their nbytes is the measured cache size)."""
        return dict(self._cache)

    def _new_cache(self, **shapes: tuple[int, ...]) -> None:
        self._filled = None
        if self.kv_store is not None:
            self._cache = self.kv_store.allocate(shapes, self.weight_device, self.weight_dtype)
            return
        self._cache = {
            name: torch.zeros(dims, device=self.weight_device, dtype=self.weight_dtype)
            for name, dims in shapes.items()
        }

    def _store(self, name: str, index: kvquant.Index, values: Tensor) -> None:
        """Write `values` into cache tensor `name` at (batch, token) slices `index`, quantized
        when the cache is FP8."""
        if self.kv_store is None:
            self._cache[name][index] = values
        else:
            self.kv_store.store(self._cache, name, index, values)

    def _load(self, name: str, index: kvquant.Index) -> Tensor:
        """Cache tensor `name` at `index` in the weights' dtype: a view, or a dequantized copy of an FP8 cache."""
        if self.kv_store is None:
            return self._cache[name][index]
        return self.kv_store.load(self._cache, name, index, self.weight_dtype)

    def cache_nbytes(self) -> int:
        return sum(t.nbytes for t in self.cache_tensors().values())

    @torch.no_grad()
    def fill_cache_random(self, length: int, generator: torch.Generator | None = None, *,
                          seed: int | None = None) -> None:
        """Fill cache slots [0, length) with unit-variance values, standing in for a long
        prefill that would be too slow (or too big for the eager path) to run first.

        The values are made on the cache's device, chunk by chunk, in the cache's dtype
        (`random_fill`): no host copy of the cache, no full-size float32 temporary. They
        depend only on `seed` (else one draw from `generator`), the tensor's name and the
        element's index in cache[:, :length], so CPU and GPU fill the same values.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
        assert self.cache_map is not None, "allocate_cache first"
        self._filled = (seed, length)
        if self.kv_store is None:
            for name, t in self.cache_tensors().items():
                self.cache_map.fill(t, name, length, seed)
            return
        # The unquantized values one sequence at a time, in the compute dtype, then stored.
        for name, dims in self.cache_shapes(self.batch, self.max_seq_len).items():
            if self.cache_map.plain:
                self.kv_store.fill(self._cache, name, length, lambda b, n=name, d=dims: self._fill_values(
                    n, d, b, seed, length, self.weight_dtype))
                continue
            # Ragged or paged: the same logical values, each sequence's context slots only, encoded
            # first and then placed where the map keeps that sequence's tokens.
            self.kv_store.calibrate_fill(self._cache, name)
            for b, n in enumerate(self.cache_map.context_slots(length)):
                if n > 0:
                    values = self._fill_values(name, dims, b, seed, length, self.weight_dtype)[:n]
                    stored = self.kv_store.to_stored(self._cache, name, values)
                    self.cache_map.write_sequence(self._cache[name], b, stored)

    # --- cache addressing: what core_inputs use, so every layout is served the same way --------
    def _write(self, name: str, start_pos: int, rows: Tensor) -> None:
        """Write the step's rows (B, S, ...) of cache tensor `name` at their positions (quantized
        first when the cache is FP8)."""
        if self.kv_store is not None:
            if self.cache_map.plain:  # one (batch, token) slice: the store writes it in place
                b, s = rows.shape[:2]
                self._store(name, (slice(None, b), slice(start_pos, start_pos + s)), rows)
                return
            rows = self.kv_store.to_stored(self._cache, name, rows)
        self.cache_map.write(self._cache[name], start_pos, rows)

    def _read(self, name: str, b: int, end: int) -> Tensor:
        """(b, end, ...) slots of cache tensor `name` in the weights' dtype: a view of a contiguous
        cache, a gather of a paged one; an FP8 cache's slots dequantized."""
        stored = self.cache_map.read(self._cache[name], b, end)
        if self.kv_store is None:
            return stored
        return self.kv_store.from_stored(self._cache, name, stored, self.weight_dtype)

    def _rope_at(self, table: tuple[Tensor, Tensor], b: int, start_pos: int, s: int) -> tuple[Tensor, Tensor]:
        """cos, sin of the step's positions: (S, d/2) when uniform, (b, S, d/2) per sequence when ragged."""
        pos = self.cache_map.positions(b, start_pos, s) if self.cache_map is not None else None
        if pos is None:
            return table[0][start_pos:start_pos + s], table[1][start_pos:start_pos + s]
        return table[0][pos], table[1][pos]

    def step_lengths(self, b: int, start_pos: int, s: int) -> Tensor | None:
        """(b,) tokens each sequence holds after a step of s tokens at start_pos; None when uniform."""
        return None if self.cache_map is None else self.cache_map.step_lengths(b, start_pos, s)

    def _fill_values(self, name: str, dims: tuple[int, ...], b: int, seed: int, length: int,
                     dtype: torch.dtype) -> Tensor:
        """What `fill_cache_random` writes into slots [0, length) of sequence b of the logical cache
        tensor `name` (dims (B, T, ...)), in `dtype`: the same values whatever the cache stores."""
        out = torch.empty(length * math.prod(dims[2:]), device=self.weight_device, dtype=dtype)
        random_fill(out, seed, zlib.crc32(name.encode()), first_index=b * out.numel())
        return out.view(length, *dims[2:])

    def _check_step(self, x: Tensor, start_pos: int) -> None:
        if self.max_seq_len == 0:
            raise RuntimeError(f"{self.name}: call allocate_cache(batch, max_seq_len) first")
        b, s, _ = x.shape
        if b > self.batch or start_pos < 0 or start_pos + s > self.max_seq_len:
            raise ValueError(
                f"{self.name}: step of batch {b}, tokens [{start_pos}, {start_pos + s}) does not fit "
                f"the cache (batch {self.batch}, {self.max_seq_len} slots)"
            )

    def reference(self, rows: list[int] | None = None, unquantized: bool = False) -> Self:
        """A float64 copy on the same weights and cache contents (of the sequences `rows`,
        default all), to be run with the eager core on those sequences' inputs. It is always
        contiguous, with the same per-sequence lengths: a paged cache is checked against the
        contiguous cache its pages spell.

        The copy's cache is unquantized float64. For an FP8 cache it holds the stored values
        dequantized, or with `unquantized` the values before quantization: the context the
        random fill wrote, in the compute dtype (what the same case without FP8 would hold)."""
        cache, self._cache = self._cache, {}
        try:
            ref = copy.deepcopy(self)  # weights only: the cache is converted below, never copied twice
        finally:
            self._cache = cache
        ref.to(torch.float64)
        ref.kv_store = None
        # "Unquantized" is the same case without kv_dtype: a tensor the model itself stores
        # quantized (dsa's FP8 indexer key) stays so, in the context and in the step's rows.
        by_design = self.kv_format(self.shape.replace(kv_dtype="")) if unquantized else None
        if self.kv_store is not None and not unquantized:
            ref.kv_store = kvquant.RoundTrip(self.kv_store, {k: t for k, t in cache.items() if k.endswith("_scale")})
        elif by_design is not None:
            ref.kv_store = kvquant.RoundTrip(by_design, {})
        rows = list(range(self.batch)) if rows is None else rows
        if not rows or min(rows) < 0 or max(rows) >= self.batch:
            raise ValueError(f"{self.name}: reference rows {rows} outside the cache's batch of {self.batch}")
        ref.batch = len(rows)
        cmap = self.cache_map
        lengths = None if cmap is None or cmap.lengths is None else tuple(cmap.lengths[r] for r in rows)
        ref.cache_map = CacheMap(len(rows), self.max_seq_len, self.weight_device, lengths)
        ref.read_pages_in_core = False
        # The stored tensors of sequences `rows`, contiguous (B', T_max, ...); FP8 scales are per layer.
        stored = {k: t for k, t in cache.items() if not k.endswith("_scale")}
        if cmap is not None and (cmap.page_size or rows != list(range(self.batch))):
            stored = {name: cmap.gather(t, rows) for name, t in stored.items()}
        if self.kv_store is None:
            ref._cache = {name: t.to(torch.float64) for name, t in stored.items()}
            return ref
        stored.update({k: t for k, t in cache.items() if k.endswith("_scale")})
        everything = (slice(None), slice(None))
        held = ref.cache_map.slots
        ref._cache = {}
        for name, dims in self.cache_shapes(self.batch, self.max_seq_len).items():
            if not unquantized or kvquant.stored_by_design(by_design, name):
                ref._cache[name] = self.kv_store.load(stored, name, everything, torch.float64)
                continue
            ref._cache[name] = torch.zeros((len(rows), *dims[1:]), device=self.weight_device, dtype=torch.float64)
            if self._filled is not None:
                seed, length = self._filled
                for i, b in enumerate(rows):
                    n = length - (self.max_seq_len - held[i])  # a ragged sequence's context is shorter
                    if n > 0:
                        ref._cache[name][i, :n] = self._fill_values(name, dims, b, seed, length,
                                                                    self.weight_dtype)[:n]
        return ref
