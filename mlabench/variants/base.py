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

The core contract (`core(q, k, v, scale, causal) -> o`) is written out in `attention.py`;
the cache half of a variant (allocation, fill, layouts, the float64 copy) is `cache_store.py`.

A variant whose core is not this contract (tpa-factorized contracts factor tensors and never
builds K or V) sets `generic_core = False` and overrides `native_core`: `forward` and the eager
backend run it, and backends that swap in a generic kernel (sdpa) answer unsupported.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants import kvquant
from mlabench.variants.attention import CoreAttention, eager_attention
from mlabench.variants.cache_store import CacheStore

if TYPE_CHECKING:
    from mlabench.step import Step


def check_tp(sh: AttentionShape, tp: int, groups: int = 1) -> None:
    """Tensor parallelism splits the query heads (as vLLM and SGLang do): tp must be a positive
    divisor of H and, for a cache of `groups` KV groups that query heads are bound to, a divisor
    or a multiple of `groups` (vLLM refuses the rest too: one GPU's query heads would read two
    groups, and one group's share of a GPU would not be whole). ShapeError naming `tp` otherwise."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ShapeError("tp", f"must be a positive integer, got {tp!r}")
    if sh.num_heads % tp:
        raise ShapeError("tp", f"tensor-parallel degree {tp} does not divide num_heads ({sh.num_heads})")
    if groups > 1 and groups % tp and tp % groups:
        raise ShapeError("tp", f"tensor-parallel degree {tp} is neither a divisor nor a multiple of the {groups} "
                               f"KV groups (num_heads {sh.num_heads}): one GPU's query heads would read two groups")


class AttentionVariant(CacheStore):
    """Base class: one attention design, its math (`forward`) and its costs (class methods).

    A subclass sets `name` and the descriptive class attributes, builds weights in
    `__init__`, and implements `cache_shapes`, `forward` (plus `_build_length_state` when
    it has RoPE tables) and the cost model below, from docs/variants.md. The cost model is class
    methods of the normalized shape, so `mlabench kv` and the analytic columns read them
    without building a module. Register with `@register_variant`; nothing else names it.
    """

    name: ClassVar[str]
    family: ClassVar[str] = "other"  # grouping in listings and charts: gqa, mla, latent, ...
    caches: ClassVar[str] = ""  # what one token leaves in the cache, in words
    cache_formula: ClassVar[str] = ""  # cache elements per token per layer, in docs/variants.md's symbols
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
    def tp_groups(cls, sh: AttentionShape) -> int:
        """How many KV groups the query heads are bound to when tensor parallelism splits them
        (G for GQA and GTA, h_c for GLA); 1 when every GPU holds the same cache or each head its own."""
        return 1

    @classmethod
    def check_tp(cls, sh: AttentionShape, tp: int) -> None:
        """ShapeError naming `tp` when tp does not split this variant's heads and groups evenly."""
        check_tp(sh, tp, cls.tp_groups(sh))

    @classmethod
    def groups_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        """KV groups one GPU holds at degree `tp` (checked first): the groups its query heads read,
        so a group is copied onto several GPUs once tp exceeds the groups."""
        cls.check_tp(sh, tp)
        return math.ceil(cls.tp_groups(sh) / tp)

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int | None:
        """Cache elements per token per layer held on ONE GPU at tensor-parallel degree `tp`
        (docs/variants.md §6: query heads split over the GPUs, what cannot split is replicated). tp = 1 is the
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
        """FLOPs of the new tokens' projections (and run-time absorption): by default every
        parameter multiplies once per new token (a variant whose weights act otherwise overrides)."""
        return step.batch * step.new_tokens * 2 * cls.param_count(sh)

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

    @classmethod
    def scored_keys(cls, sh: AttentionShape, step: Step) -> int:
        """Keys the plain PyTorch cores (eager, SDPA) score per query: their score matrix's width.
        `attended_keys` unless the variant's plain core masks a wider context than a sparse kernel reads."""
        return cls.attended_keys(sh, step)

    @classmethod
    def context_working_bytes(cls, sh: AttentionShape, step: Step, expands_kv: bool) -> int:
        """Bytes the step's plain PyTorch path holds in working copies of the context it attends,
        beside the score matrix, for the CPU memory pre-flight. Eager's einsums copy K into a
        contiguous layout, and V too where several KV heads stride it. With `expands_kv` (SDPA's
        math kernel): K and V repeated to every query head at the query's and output's head widths
        and the scaled K it multiplies, in fp32 or wider (a reduced-precision input is first
        upcast: one more copy of K and V, a V that is a slice of K copied on its own)."""
        k_w, v_w = cls.core_kv_widths(sh)
        q_w, o_w = cls.qo_widths(sh)
        keys = step.batch * cls.scored_keys(sh, step)
        eb = sh.element_bytes
        if not expands_kv:
            kv_heads = k_w * sh.num_heads // q_w  # the KV heads the core reads (a query head is as wide as K's)
            return keys * (k_w + (v_w if kv_heads > 1 else 0)) * eb
        upcast = k_w + (v_w or k_w) if eb < 4 else 0
        return keys * (2 * q_w + o_w + upcast) * max(eb, 4)

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.shape = self.normalize_shape(shape)
        self.kv_store = self.kv_format(self.shape)

    # --- compute -----------------------------------------------------------------------
    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """Everything before the core for the tokens x at start_pos, including writing their
        cache rows: returns (q, k, v, scale, causal), the core's arguments (k, v usually views
        of the cache)."""
        raise NotImplementedError

    def core_output(self, o: Tensor) -> Tensor:
        """Everything after the core: o (B, S, Hq, Dv) -> y (B, S, d). By default the heads side by
        side through the output projection `o_proj` (the checkpoints' name; a variant without one
        overrides this)."""
        return self.o_proj(o.flatten(2))

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
