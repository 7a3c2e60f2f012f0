"""The analytic cost model: KV-cache bytes, parameter counts, FLOPs and bytes moved.

Functions of (variant name, shape, step) that need no tensors. Each variant's
formulas live on its class (`AttentionVariant.kv_elements_per_token`, `core_flops`,
...), written from docs/variants.md; this module only looks the class up and assembles:

- FLOPs count multiply-adds as 2 and only (query, key) pairs a causal mask lets
  through; projections are counted per new token. RMSNorm, RoPE and softmax are
  left out (a few FLOPs per element, noise next to the matmuls).
- Bytes are a lower bound on traffic: weights once, the cache tokens attended
  once (the MLA latent once, since V is a slice of K), cache writes, x, y, Q and O;
  for mla-latent and lowrank-kv also the expanded K/V written and read back.
- An FP8 cache (`kv_dtype`) is counted as stored: its bytes per token and scales come from the
  variant class (`kv_cache_bytes`, `kv_bytes_per_token`), the cache part of the traffic moves
  those bytes, and anything expanded from it (mla-latent, lowrank-kv) the compute dtype.
- Timing scope "core" has its own figures (`kernel_flops`, `kernel_bytes`): the core alone
  on the tensors the variant hands it, so a kernel's roofline share reads off core rows.
- A ragged batch is a list of steps, one per distinct length (`ragged_steps`): FLOPs and
  bytes are sums over the real lengths, weights counted once. KV bytes are what the layout
  holds: B x the longest sequence for a contiguous cache, whole pages over the real lengths
  for a paged one (`layout_kv_cache_bytes`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlabench.config import AttentionShape
from mlabench.layout import pages_for
from mlabench.step import Step
from mlabench.variants.registry import variant_class

if TYPE_CHECKING:
    from mlabench.variants.base import AttentionVariant


# --- the generic assembly: each variant's class holds its own formulas ---------------------
@functools.lru_cache(maxsize=4096)  # a sweep's estimate asks again for every case of one shape
def _normalized(variant: str, shape: AttentionShape) -> tuple[type[AttentionVariant], AttentionShape]:
    cls = variant_class(variant)
    return cls, cls.normalize_shape(shape)


def _per_token(variant: str, value: int | None) -> int:
    if value is None:
        raise ValueError(f"{variant} has no per-token cache size (it caches a fixed number of projected rows)")
    return value


def kv_elements_per_token(variant: str, shape: AttentionShape) -> int:
    """Cache elements per token per layer (ValueError for a cache that does not grow with tokens)."""
    cls, sh = _normalized(variant, shape)
    return _per_token(variant, cls.kv_elements_per_token(sh))


def kv_cache_elements(variant: str, shape: AttentionShape, batch: int, seq_len: int) -> int:
    """Cache elements of one layer for `batch` sequences of `seq_len` slots."""
    cls, sh = _normalized(variant, shape)
    return cls.kv_cache_elements(sh, batch, seq_len)


def kv_cache_bytes(variant: str, shape: AttentionShape, batch: int, seq_len: int, layers: int = 1) -> int:
    """Exact bytes of the cache the module allocates (FP8 scales included), times `layers` for
    whole-model figures."""
    cls, sh = _normalized(variant, shape)
    return cls.kv_cache_bytes(sh, batch, seq_len) * layers


def kv_bytes_per_token(variant: str, shape: AttentionShape) -> int:
    """Stored cache bytes per token per layer (per-layer scales not included: `kv_fixed_bytes`)."""
    cls, sh = _normalized(variant, shape)
    return _per_token(variant, cls.kv_bytes_per_token(sh))


def _cache_traffic_bytes(cls: type[AttentionVariant], sh: AttentionShape, step: Step) -> int:
    """The variant's cache traffic in bytes: the cache's own tokens at their stored width (FP8
    rows and their scales), anything expanded from them in the compute dtype."""
    own = cls.cache_traffic_bytes(sh, step)
    if own is not None:
        return own
    elements = cls.cache_traffic_elements(sh, step)
    per_token = cls.kv_elements_per_token(sh)
    if cls.kv_format(sh) is None or per_token is None:
        return elements * sh.element_bytes
    tokens = step.batch * (step.total + step.new_tokens)  # T read, S written
    stored = tokens * cls.kv_bytes_per_token(sh) + cls.kv_fixed_bytes(sh)
    return stored + (elements - tokens * per_token) * sh.element_bytes


def check_tp(variant: str, shape: AttentionShape, tp: int) -> None:
    """Tensor parallelism splits the query heads evenly (as vLLM and SGLang do): tp must divide H
    and must not straddle the variant's KV groups (`AttentionVariant.check_tp`)."""
    cls, sh = _normalized(variant, shape)
    cls.check_tp(sh, tp)


def kv_elements_per_token_per_gpu(variant: str, shape: AttentionShape, tp: int) -> int:
    """Cache elements per token per layer on one GPU at tensor-parallel degree tp (docs/variants.md §6)."""
    cls, sh = _normalized(variant, shape)
    cls.check_tp(sh, tp)
    per_token = cls.kv_elements_per_token_per_gpu(sh, tp)
    if per_token is None:
        raise ValueError(f"{variant} has no per-token cache size (it caches a fixed number of projected rows)")
    return per_token


def kv_bytes_per_token_per_gpu(variant: str, shape: AttentionShape, tp: int) -> int:
    """Stored cache bytes per token per layer on ONE GPU at tensor-parallel degree tp (per-layer
    scales not included: `kv_fixed_bytes`)."""
    cls, sh = _normalized(variant, shape)
    cls.check_tp(sh, tp)
    elements = cls.kv_elements_per_token_per_gpu(sh, tp)
    if elements is None:
        raise NotImplementedError(f"{cls.name} has no per-token cache to split over GPUs")
    if cls.kv_format(sh) is None:
        return elements * sh.element_bytes
    own = cls.kv_bytes_per_token_per_gpu(sh, tp)
    if own is not None:
        return own
    # Stored rows (FP8): a GPU holds its share of every row; a row's scales travel with the values they scale.
    return elements * cls.kv_bytes_per_token(sh) // cls.kv_elements_per_token(sh)


def kv_cache_bytes_per_gpu(variant: str, shape: AttentionShape, batch: int, seq_len: int, tp: int,
                           layers: int = 1) -> int:
    """Bytes of the cache one GPU holds at tensor-parallel degree tp, times `layers`."""
    cls, sh = _normalized(variant, shape)
    cls.check_tp(sh, tp)
    if cls.kv_format(sh) is None:
        return cls.kv_cache_elements_per_gpu(sh, batch, seq_len, tp) * sh.element_bytes * layers
    # Per-tensor FP8 scales (kv_fixed_bytes) are replicated on every GPU.
    return (kv_bytes_per_token_per_gpu(variant, shape, tp) * batch * seq_len + cls.kv_fixed_bytes(sh)) * layers


def param_count(variant: str, shape: AttentionShape, seq_len: int | None = None) -> int:
    """Parameter count of one layer's module (linformer's depends on n = seq_len)."""
    cls, sh = _normalized(variant, shape)
    return cls.param_count(sh, seq_len=seq_len)


def core_flops(variant: str, shape: AttentionShape, step: Step) -> int:
    """Attention core (scores and weighted sum, plus cache expansion where the variant does it)."""
    cls, sh = _normalized(variant, shape)
    return cls.core_flops(sh, step)


def projection_flops(variant: str, shape: AttentionShape, step: Step) -> int:
    """Projections of the new tokens (and MLA's run-time absorption)."""
    cls, sh = _normalized(variant, shape)
    return cls.projection_flops(sh, step)


def flops(variant: str, shape: AttentionShape, step: Step) -> int:
    return core_flops(variant, shape, step) + projection_flops(variant, shape, step)


def bytes_moved(variant: str, shape: AttentionShape, step: Step) -> int:
    """Minimum bytes a step must move: weights once, x in and y out, the core's Q and O, and
    the cache traffic the variant defines (read T tokens, write S, plus anything it expands)."""
    cls, sh = _normalized(variant, shape)
    return cls.param_count(sh, seq_len=step.total) * sh.element_bytes + _token_bytes(variant, shape, step)


def _token_bytes(variant: str, shape: AttentionShape, step: Step) -> int:
    """bytes_moved less the weights: what grows with the batch's sequences."""
    cls, sh = _normalized(variant, shape)
    eb = sh.element_bytes
    q_w, o_w = cls.qo_widths(sh)
    activations = step.batch * step.new_tokens * (2 * sh.hidden_size + q_w + o_w) * eb
    return activations + _cache_traffic_bytes(cls, sh, step)


# --- the attention core alone (timing scope "core") ----------------------------------------
def kernel_flops(variant: str, shape: AttentionShape, step: Step) -> int:
    """FLOPs of the core alone: scores and weighted sum over the pairs it attends, no cache
    expansion (that happens before the core, in `core_inputs`)."""
    cls, sh = _normalized(variant, shape)
    return cls.kernel_flops(sh, step)


def kernel_bytes(variant: str, shape: AttentionShape, step: Step) -> int:
    """Minimum bytes of the core alone: K and V read once (the MLA latent once), Q read, O written.
    A core whose K and V are the cache itself reads an FP8 cache at its stored width."""
    cls, sh = _normalized(variant, shape)
    k_w, v_w = cls.core_kv_widths(sh)
    q_w, o_w = cls.qo_widths(sh)
    b, s = step.batch, step.new_tokens
    kv = cls.attended_keys(sh, step) * (k_w + v_w) * sh.element_bytes
    if sh.kv_quantized and k_w + v_w == cls.kv_elements_per_token(sh):
        kv = cls.attended_keys(sh, step) * cls.kv_bytes_per_token(sh) + cls.kv_fixed_bytes(sh)
    return b * (kv + s * (q_w + o_w) * sh.element_bytes)


def scoped_flops(variant: str, shape: AttentionShape, step: Step, scope: str) -> int:
    return kernel_flops(variant, shape, step) if scope == "core" else flops(variant, shape, step)


def scoped_bytes(variant: str, shape: AttentionShape, step: Step, scope: str) -> int:
    return kernel_bytes(variant, shape, step) if scope == "core" else bytes_moved(variant, shape, step)


# --- ragged batches and cache layouts ----------------------------------------------------------
def ragged_scoped_flops(variant: str, shape: AttentionShape, steps: Sequence[Step], scope: str) -> int:
    """FLOPs of a ragged step: the sum over its sequences (every term is per sequence)."""
    return sum(scoped_flops(variant, shape, st, scope) for st in steps)


def ragged_scoped_bytes(variant: str, shape: AttentionShape, steps: Sequence[Step], scope: str) -> int:
    """Bytes of a ragged step: the sum over its sequences, the weights (scope step) once."""
    if scope == "core":
        return sum(kernel_bytes(variant, shape, st) for st in steps)
    cls, sh = _normalized(variant, shape)
    weights = cls.param_count(sh, seq_len=max(st.total for st in steps)) * sh.element_bytes
    return weights + sum(_token_bytes(variant, shape, st) for st in steps)


def layout_kv_cache_bytes_per_gpu(variant: str, shape: AttentionShape, batch: int, seq_len: int, tp: int,
                                  lengths: Sequence[int] | None = None, page_size: int = 0) -> int:
    """`layout_kv_cache_bytes` on ONE GPU at tensor-parallel degree tp: a paged cache's slots are
    its whole pages, each GPU holding its share of every stored row."""
    if not page_size:
        return kv_cache_bytes_per_gpu(variant, shape, batch, seq_len, tp)
    slots = sum(pages_for(list(lengths) if lengths is not None else [seq_len] * batch, page_size)) * page_size
    return kv_cache_bytes_per_gpu(variant, shape, 1, slots, tp)  # per-token caches: bytes follow the slots


def layout_kv_cache_bytes(variant: str, shape: AttentionShape, batch: int, seq_len: int,
                          lengths: Sequence[int] | None = None, page_size: int = 0, layers: int = 1) -> int:
    """Bytes the cache tensors of one layer hold: a contiguous cache B x seq_len slots (each
    sequence owns the longest one's room), a paged one whole pages over each sequence's length
    (`lengths`, default all seq_len); the block table is metadata, not KV."""
    if not page_size:
        return kv_cache_bytes(variant, shape, batch, seq_len, layers)
    slots = sum(pages_for(list(lengths) if lengths is not None else [seq_len] * batch, page_size)) * page_size
    cls, sh = _normalized(variant, shape)
    return (kv_bytes_per_token(variant, shape) * slots + cls.kv_fixed_bytes(sh)) * layers  # FP8: rows as stored
