"""The variant contract: an `nn.Module` with real weights and an explicit, preallocated KV cache.

Every variant runs `forward(x, start_pos, core)`:
- x (B, S, d) are S new tokens at absolute positions start_pos .. start_pos+S-1;
- their keys/values are written into cache slots [start_pos, start_pos+S), so
  repeating a decode step at the same start_pos overwrites the same slots and a
  timing loop never grows memory;
- attention covers cache slots [0, start_pos+S), causal and bottom-right aligned;
- `core` is the attention kernel (eager by default); backends swap it for SDPA or
  a fused kernel without touching projections or cache layout.

`forward` is `core_output(core(*core_inputs(x, start_pos)))`: `core_inputs` runs everything
before the core (projections, RoPE, the step's cache write) and returns exactly the
arguments the core gets, so the core can also be timed alone (scope "core") on the same
inputs the whole step would hand it.

The core contract, shared by every variant and backend:
    core(q, k, v, scale, causal) -> o
    q (B, S, Hq, Dk), k (B, T, Hkv, Dk), v (B, T, Hkv, Dv), Hq % Hkv == 0,
    query head h reads KV head h // (Hq / Hkv); o (B, S, Hq, Dv) in q's dtype.
    `causal` is a bool (bottom-right causal or none) or a (B, S, T) bool tensor, True where
    query s may see key t (DeepSeek Sparse Attention's index mask, causality included).

A variant whose core is not this contract (tpa-factorized contracts factor tensors and never
builds K or V) sets `generic_core = False` and overrides `native_core`: `forward` and the eager
backend run it, and backends that swap in a generic kernel (sdpa) answer unsupported.
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import Tensor, nn

from mlabench.config import AttentionShape, ShapeError
from mlabench.errors import UnsupportedError
from mlabench.variants import kvquant
from mlabench.variants.cache_map import CacheMap

if TYPE_CHECKING:
    from mlabench.analytic import Step


class CoreAttention(Protocol):
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor) -> Tensor: ...


def causal_mask(s: int, t: int, device: torch.device) -> Tensor:
    """(S, T) bool, True where query s (absolute position t-s+..) may see key t: bottom-right aligned."""
    q_pos = torch.arange(t - s, t, device=device)[:, None]
    k_pos = torch.arange(t, device=device)[None, :]
    return k_pos <= q_pos


def ragged_mask(lengths: Tensor, s: int, t: int, causal: bool) -> Tensor:
    """(B, S, T) bool for a ragged batch: sequence b holds lengths[b] tokens, its S new queries
    the last S of them; a query sees keys < lengths[b] (and, causal, none after itself)."""
    k_pos = torch.arange(t, device=lengths.device)[None, None, :]  # (1, 1, T)
    if causal:
        q_pos = lengths[:, None] - s + torch.arange(s, device=lengths.device)[None, :]  # (B, S)
        return k_pos <= q_pos[:, :, None]
    return k_pos < lengths[:, None, None]


def eager_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                    lengths: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) v in plain PyTorch; softmax in fp32 (fp64 for fp64 inputs).
    `causal` as a (B, S, T) bool tensor is the mask itself (True: visible).
    `lengths` (B,): a ragged batch, keys past a sequence's length masked out."""
    b, s, hq, dk = q.shape
    t, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.view(b, s, hkv, groups, dk)  # (B, S, G, H/G, Dk): no copy of K/V for GQA
    scores = torch.einsum("bsgnd,btgd->bgnst", qg, k).to(acc) * scale  # (B, G, H/G, S, T)
    if isinstance(causal, Tensor):
        mask = causal if lengths is None else causal & ragged_mask(lengths, s, t, False)
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    elif lengths is not None:
        mask = ragged_mask(lengths, s, t, causal)[:, None, None]  # (B, 1, 1, S, T)
        # Masked keys get probability exactly 0: the slack past a sequence's end (finite: caches
        # are allocated zeroed) adds nothing, and is not copied out of V on every step.
        scores = scores.masked_fill(~mask, float("-inf"))
    elif causal and s > 1:
        scores = scores.masked_fill(~causal_mask(s, t, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.einsum("bgnst,btgd->bsgnd", probs, v)  # (B, S, G, H/G, Dv)
    return out.reshape(b, s, hq, v.shape[-1])


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                      lengths: Tensor | None = None, max_scores: int = 2**26) -> Tensor:
    """`eager_attention` over blocks of queries so the score matrix stays under `max_scores`
    elements: the float64 reference of a long prefill must not need the full (S, T) scores."""
    b, s, h = q.shape[:3]
    t = k.shape[1]
    chunk = max(1, max_scores // max(1, b * h * t))
    if chunk >= s:
        return eager_attention(q, k, v, scale, causal, lengths)
    if lengths is not None:  # decode steps are short: ragged batches never need chunks
        raise ValueError("chunked_attention: a ragged batch of long query blocks is not supported")
    outs = []
    for start in range(0, s, chunk):
        end = min(s, start + chunk)
        keys = t - s + end if causal is True else t  # the block's last query sees keys up to here
        block_mask = causal[:, start:end] if isinstance(causal, Tensor) else causal
        outs.append(eager_attention(q[:, start:end], k[:, :keys], v[:, :keys], scale, block_mask))
    return torch.cat(outs, dim=1)


# random_fill: counter-based values, the same on every device. Each element's 64-bit index is
# hashed with 32-bit integer mixing done in int64 arithmetic; every product stays below 2**63
# (a value < 2**32 times a constant < 2**31), so no step overflows on any device.
_MIX = (0x7FEB352D, 0x6C8E9CF5, 0x4C957F2D)
_U24 = float(2**-24)
RANDOM_FILL_CHUNK = 1 << 22  # elements per chunk: ~100 MiB of int64 temporaries at most


def _mix32(x: Tensor, mult: int) -> Tensor:
    x = x ^ (x >> 16)
    x = (x * mult) & 0xFFFFFFFF
    return x ^ (x >> 15)


def random_fill(out: Tensor, seed: int, stream: int = 0, first_index: int = 0,
                chunk: int = RANDOM_FILL_CHUNK) -> None:
    """Fill the contiguous 1-D `out` with uniform values of variance 1 in [-sqrt(3), sqrt(3)),
    element i a hash of (seed, stream, first_index + i): deterministic, identical on CPU and
    GPU (integer hashing, then float32 operations that round exactly the same everywhere),
    computed `chunk` elements at a time on out's device and written in out's dtype."""
    if out.dim() != 1 or not out.is_contiguous():
        raise ValueError("random_fill writes a contiguous 1-D tensor")
    key = (seed * 0x9E3779B1 + stream * 0x85EBCA77 + 0x5BD1E995) & 0xFFFFFFFF  # no fixed point at 0
    scale = 2.0 * math.sqrt(3.0) * _U24
    for start in range(0, out.numel(), chunk):
        n = min(chunk, out.numel() - start)
        idx = torch.arange(first_index + start, first_index + start + n, dtype=torch.int64, device=out.device)
        hi = _mix32((idx >> 32) ^ key, _MIX[0])
        x = _mix32((idx & 0xFFFFFFFF) ^ hi, _MIX[1])
        x = _mix32(x ^ key, _MIX[2])
        u = (x >> 8).to(torch.float32)  # 24 random bits: exact in float32
        del idx, hi, x
        out[start:start + n].copy_(u.mul_(scale).sub_(math.sqrt(3.0)))  # one rounding to out's dtype


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (DeepSeek/Llama do the same), parameter named `weight`."""

    def __init__(self, dim: int, eps: float, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def linear(d_in: int, d_out: int, device: torch.device | None, dtype: torch.dtype | None) -> nn.Linear:
    """Bias-free projection, weight [out, in] as in the checkpoints."""
    return nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype)


def check_tp(sh: AttentionShape, tp: int) -> None:
    """Tensor parallelism splits the query heads (as vLLM and SGLang do): tp must be a positive
    divisor of H; ShapeError naming `tp` otherwise."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ShapeError("tp", f"must be a positive integer, got {tp!r}")
    if sh.num_heads % tp:
        raise ShapeError("tp", f"tensor-parallel degree {tp} does not divide num_heads ({sh.num_heads})")


class AttentionVariant(nn.Module):
    """Base class: one attention design, its math (`forward`) and its costs (class methods).

    A subclass sets `name` and the descriptive class attributes, builds weights in
    `__init__`, and implements `cache_shapes`, `forward` (plus `_build_length_state` when
    it has RoPE tables) and the cost model below, from MLA.md. The cost model is class
    methods of the normalized shape, so `mlabench kv` and the analytic columns read them
    without building a module. Register with `@register_variant`; nothing else names it.
    """

    name: ClassVar[str]
    family: ClassVar[str] = "other"  # grouping in listings and charts: gqa, mla, latent, ...
    caches: ClassVar[str] = ""  # what one token leaves in the cache, in words
    cache_formula: ClassVar[str] = ""  # cache elements per token per layer, in MLA.md's symbols
    supports_decode: ClassVar[bool] = True
    cache_tensor_count: ClassVar[int] = 2  # cache tensors per layer (K and V): per-tensor FP8 scales per layer
    # kv_dtype fp8_*: the stored layout's short name, then what it holds
    fp8_cache: ClassVar[str] = "per-tensor: each cache tensor in FP8 + one fp32 scale per tensor per layer"
    generic_core: ClassVar[bool] = True  # False: `native_core` is not the (q, k, v) contract; see the top
    # False: the variant reads and writes its cache by (batch, token) slices, not through the
    # CacheMap (`_write`, `_read`, `_rope_at`): no ragged batch or paged cache, refused up front.
    serving_layouts: ClassVar[bool] = True
    shape_fields: ClassVar[tuple[str, ...]] = ()  # the config.OPTIONAL_FIELDS this variant reads

    # --- shape and cost model (no tensors) -----------------------------------------------
    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        """The shape this variant runs, num_kv_heads set to the KV heads it attends with (what
        the results' column records); ShapeError naming the field when it cannot serve it."""
        return shape

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int | None:
        """Cache elements per token per layer; None when the cache does not grow with tokens."""
        raise NotImplementedError

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int | None:
        """Cache elements per token per layer held on ONE GPU at tensor-parallel degree `tp` (MLA.md
        section 6: query heads split over the GPUs, what cannot split is replicated). tp = 1 is the
        whole cache; a variant that keeps a cache under tensor parallelism defines the rest."""
        if tp == 1:
            return cls.kv_elements_per_token(sh)
        raise NotImplementedError(f"{cls.name} has no tensor-parallel cache model (tp = {tp})")

    @classmethod
    def kv_cache_elements(cls, sh: AttentionShape, batch: int, seq_len: int) -> int:
        """Cache elements of one layer for `batch` sequences of `seq_len` slots."""
        per_token = cls.kv_elements_per_token(sh)
        if per_token is None:
            raise NotImplementedError(f"{cls.name} must define kv_cache_elements")
        return batch * seq_len * per_token

    @classmethod
    def no_serving_layouts(cls, sh: AttentionShape) -> str:
        """Why this variant takes no ragged batch or paged cache ('' when it does)."""
        if cls.kv_elements_per_token(sh) is None:
            return "caches no per-token rows"
        if not cls.serving_layouts:
            return "reads its cache by (batch, token) slices"
        return ""

    # --- the stored cache: its dtype, layout and bytes -----------------------------------
    @classmethod
    def kv_format(cls, sh: AttentionShape) -> kvquant.KVFormat | None:
        """How an FP8 cache is stored (None: the compute dtype as is). Per-tensor scales by
        default; the MLA latent caches override it with DeepSeek's tiled layout."""
        return kvquant.PerTensorFP8(sh.kv_dtype) if sh.kv_quantized else None

    @classmethod
    def kv_scale_layout(cls, sh: AttentionShape) -> str:
        """The scales an FP8 cache carries, in words ('' for an unquantized cache)."""
        fmt = cls.kv_format(sh)
        return fmt.scales if fmt is not None else ""

    @classmethod
    def kv_bytes_per_token(cls, sh: AttentionShape) -> int | None:
        """Stored cache bytes per token per layer, scales kept per token included (None when the
        cache does not grow with tokens); per-layer scales are `kv_fixed_bytes`."""
        per_token = cls.kv_elements_per_token(sh)
        if per_token is None:
            return None
        return per_token * (1 if sh.kv_quantized else sh.element_bytes)

    @classmethod
    def kv_bytes_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int | None:
        """Stored bytes per token per layer on ONE GPU when a GPU's share of a row is not its share
        of the elements (None: the analytic model scales the row by the elements held)."""
        return None

    @classmethod
    def kv_fixed_bytes(cls, sh: AttentionShape) -> int:
        """Stored cache bytes per layer that do not grow with tokens: per-tensor FP8 scales."""
        return 4 * cls.cache_tensor_count if isinstance(cls.kv_format(sh), kvquant.PerTensorFP8) else 0

    @classmethod
    def kv_cache_bytes(cls, sh: AttentionShape, batch: int, seq_len: int) -> int:
        """Bytes of one layer's cache tensors as allocated (scales included): equal to their nbytes."""
        elements = cls.kv_cache_elements(sh, batch, seq_len)
        if not sh.kv_quantized:
            return elements * sh.element_bytes
        return elements + cls.kv_fixed_bytes(sh)

    @classmethod
    def kv_cache_elements_per_gpu(cls, sh: AttentionShape, batch: int, seq_len: int, tp: int) -> int:
        """Cache elements of one layer on ONE GPU at tensor-parallel degree `tp`."""
        per_token = cls.kv_elements_per_token_per_gpu(sh, tp)
        if per_token is None:
            raise NotImplementedError(f"{cls.name} must define kv_cache_elements_per_gpu")
        return batch * seq_len * per_token

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        """Parameters of one layer's module (the runner counts the module; tests hold the two equal)."""
        raise NotImplementedError

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        """Attention core FLOPs (scores, weighted sum, cache expansion where the variant does it)."""
        raise NotImplementedError

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        """FLOPs of the new tokens' projections (and run-time absorption)."""
        raise NotImplementedError

    @classmethod
    def qo_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        """Per-token widths of the core's Q input and O output."""
        return sh.num_heads * sh.head_dim, sh.num_heads * sh.head_dim

    @classmethod
    def core_kv_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        """Per-token widths of the K and V the core reads (what `core_inputs` hands it); 0 for a V
        that is a slice of K (read once)."""
        return sh.kv_heads * sh.head_dim, sh.kv_heads * sh.head_dim

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        """FLOPs of the core alone (scope `core`): scores and weighted sum, no cache expansion."""
        return step.batch * 4 * sh.num_heads * sh.head_dim * step.attended_pairs

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        """Cache (and cache-derived) elements a step must move: by default T tokens read, S written."""
        per_token = cls.kv_elements_per_token(sh) or 0
        return step.batch * (step.total + step.new_tokens) * per_token

    @classmethod
    def cache_traffic_bytes(cls, sh: AttentionShape, step: Step) -> int | None:
        """The same traffic in bytes when the cache's tensors are stored at different widths (None:
        the analytic model counts it from the elements and the stored bytes per token)."""
        return None

    @classmethod
    def attended_keys(cls, sh: AttentionShape, step: Step) -> int:
        """Keys each query scores against (the width of the score matrix)."""
        return step.total

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        """Elements a step materializes beyond cache and activations (re-expanded K/V), for the
        CPU memory pre-flight."""
        return 0

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.shape = self.normalize_shape(shape)
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
        self.kv_store: kvquant.KVFormat | kvquant.RoundTrip | None = self.kv_format(self.shape)
        self._filled: tuple[int, int] | None = None  # (seed, length) of the last random fill

    @property
    def weight_device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- cache -----------------------------------------------------------------------
    def prepare_length(self, max_seq_len: int) -> None:
        """Build what depends on the context length but is not KV cache (RoPE tables, Linformer's
        [k, n] projections). `allocate_cache` calls it; the runner calls it first so that the
        allocation it measures holds the cache tensors and nothing else."""
        if self._prepared_len != max_seq_len:
            self._build_length_state(max_seq_len)
            self._prepared_len = max_seq_len

    def _build_length_state(self, max_seq_len: int) -> None:
        """Subclasses with length-dependent state override this."""

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
                self.cache_map.fill(t, name, length, seed, random_fill)
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

    # --- compute -----------------------------------------------------------------------
    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """Everything before the core for the tokens x at start_pos, including writing their
        cache rows: returns (q, k, v, scale, causal), the core's arguments (k, v usually views
        of the cache)."""
        raise NotImplementedError

    def core_output(self, o: Tensor) -> Tensor:
        """Everything after the core: o (B, S, Hq, Dv) -> y (B, S, d)."""
        raise NotImplementedError

    def native_core(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                    lengths: Tensor | None = None) -> Tensor:
        """The variant's own attention core in plain PyTorch, on what `core_inputs` returns."""
        return eager_attention(q, k, v, scale, causal, lengths)

    def forward(self, x: Tensor, start_pos: int = 0, core: CoreAttention | None = None) -> Tensor:
        q, k, v, scale, causal = self.core_inputs(x, start_pos)
        core = core or self.native_core
        lengths = self.step_lengths(x.shape[0], start_pos, x.shape[1])
        if lengths is None:
            return self.core_output(core(q, k, v, scale, causal))
        return self.core_output(core(q, k, v, scale, causal, lengths=lengths))  # ragged: every core masks

    def reference(self, rows: list[int] | None = None, unquantized: bool = False) -> AttentionVariant:
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
