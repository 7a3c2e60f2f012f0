"""Attention-layer shapes: one frozen dataclass, its validation, and real-model presets.

`AttentionShape` describes one attention layer (plus the layer count for
whole-model figures). It is validated before any tensor exists: every
impossible value raises `ShapeError` naming the field. What a shape must hold
for one variant is that variant's own check (`AttentionVariant.normalize_shape`).

Field meaning per family (see docs/variants.md):
- GQA family (mha/mqa/gqa): `head_dim` is D, `num_kv_heads` is G.
- MLA: `head_dim` is qk_nope_head_dim d_n, `rope_head_dim` d_r, `v_head_dim` d_v,
  `q_lora_rank` d_q (0 = no query compression), `kv_lora_rank` d_c.
- lowrank-kv: `kv_lora_rank` is the per-head latent width (< head_dim).
- linformer: `kv_lora_rank` is the projected sequence length k.
- gta: `head_dim` D, `num_kv_heads` G tied K/V heads, `rope_head_dim` d_r of the one shared RoPE key.
- gla: `num_latent_heads` h_c latent heads splitting `kv_lora_rank` (h_c*d_g in all),
  `q_lora_rank` the query latent, `head_dim` D, `rope_head_dim` d_r.
- tpa: `q_rank`, `k_rank`, `v_rank` are R_q, R_k, R_v; `head_dim` is D.
- dsa: MLA's fields plus the lightning indexer's `index_heads` H_I, `index_head_dim` d_I
  and `topk` k (cached tokens each query attends to).
0 in a rank, index or topk field means the shape does not use it; the variant that needs
it refuses 0 naming the field.
`kv_lora_rank` is thus "the latent rank" of every latent variant, the axis the
latent-rank suite sweeps.

`kv_dtype` is what the KV cache stores: "" (the compute dtype, the default) or an FP8
format (`KV_FP8_DTYPES`); how each variant lays out and scales an FP8 cache is its own
(`variants/kvquant.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DTYPES: dict[str, int] = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_ALIASES: dict[str, str] = {
    "fp64": "float64",
    "double": "float64",
    "fp32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
}


# FP8 cache formats -> torch dtype names; values above the format's largest finite value saturate.
KV_FP8_DTYPES: dict[str, str] = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
KV_DTYPE_ALIASES: dict[str, str] = {"float8_e4m3fn": "fp8_e4m3", "e4m3": "fp8_e4m3", "float8_e5m2": "fp8_e5m2",
                                    "e5m2": "fp8_e5m2"}


class ShapeError(ValueError):
    """An impossible shape or case; `field` names the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def canonical_dtype(name: str) -> str:
    """'bf16' -> 'bfloat16'; raises ShapeError for unknown names."""
    name = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if name not in DTYPES:
        raise ShapeError("dtype", f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return name


def canonical_kv_dtype(name: str | None, dtype: str) -> str:
    """The stored form of a cache dtype for compute dtype `dtype`: "" for the compute dtype itself
    (given as "", "auto" or its name), else the FP8 format's name; ShapeError otherwise."""
    text = "" if name is None else str(name).strip().lower()
    text = KV_DTYPE_ALIASES.get(text, text)
    if text in KV_FP8_DTYPES:
        return text
    if text in ("", "auto"):
        return ""
    choices = f"auto, {canonical_dtype(dtype)}, {', '.join(KV_FP8_DTYPES)}"
    if DTYPE_ALIASES.get(text, text) not in DTYPES:
        raise ShapeError("kv_dtype", f"unknown cache dtype {name!r} (choose from {choices})")
    if canonical_dtype(text) != canonical_dtype(dtype):
        raise ShapeError("kv_dtype", f"a cache in {canonical_dtype(text)} needs compute dtype "
                                     f"{canonical_dtype(text)}, not {canonical_dtype(dtype)} (choose from {choices})")
    return ""


def dtype_bytes(name: str) -> int:
    return DTYPES[canonical_dtype(name)]


# How a field is bounded: checked on every shape before any tensor exists (`validate_shape`).
POSITIVE, NON_NEGATIVE, FINITE = "positive", "non-negative", "finite"


REQUIRED = dataclasses.MISSING  # a field every shape must give


def shape_field(default: Any, bounds: str | None, doc: str, *, key: bool = True, optional: bool = False,
                backfill: bool = True, id_if_set: bool = True, recorded_as: str = "") -> Any:
    """One shape field's declaration, the only one: the dataclass field and what the rest derives.

    - `bounds`: POSITIVE, NON_NEGATIVE or FINITE (None: checked by hand in `validate_shape`).
    - `key`: a results.csv key column (schema.ResultRow, case.Case.key), in declaration order.
    - `optional`: read by some variants only; the others record its default (`OPTIONAL_FIELDS`).
    - `backfill`: a results.csv written before the column existed reads as `default`
      (rundir.read.KEY_DEFAULTS); False for the columns every run has had.
    - `id_if_set`: hashed into the case id only when not at `default`, so the cases measured
      before the field existed keep their ids (schema.case_id).
    - `recorded_as`: the property whose value the key column records (the value in effect,
      e.g. `kv_heads` for a num_kv_heads of None); '' for the field itself.
    A new field keeps `backfill` and `id_if_set` at their defaults."""
    meta = {"bounds": bounds, "doc": doc, "key": key, "optional": optional, "backfill": backfill,
            "id_if_set": id_if_set, "recorded_as": recorded_as or None}
    return field(metadata=meta) if default is dataclasses.MISSING else field(default=default, metadata=meta)


def _legacy(default: Any, bounds: str | None, doc: str, *, backfill: bool = False, optional: bool = False,
            recorded_as: str = "") -> Any:
    """A field from before case ids skipped defaults: always hashed (ids already include it)."""
    return shape_field(default, bounds, doc, optional=optional, backfill=backfill, id_if_set=False,
                       recorded_as=recorded_as)


@dataclass(frozen=True, kw_only=True)
class AttentionShape:
    """The shape of one attention layer; frozen so it can be part of a results key.

    Each field is declared once, here, with `shape_field`: its bounds, whether it is part of
    the case key, and its meaning. The key fields' order is the results.csv columns' order."""

    num_heads: int = _legacy(REQUIRED, POSITIVE, "query heads H")
    num_kv_heads: int | None = _legacy(None, POSITIVE, "KV heads G (None: H, MHA)", recorded_as="kv_heads")
    head_dim: int = _legacy(REQUIRED, POSITIVE, "head width D (MLA: d_n, the no-RoPE part)")
    q_lora_rank: int = _legacy(0, NON_NEGATIVE, "query latent d_q (0: no query compression)")
    kv_lora_rank: int = _legacy(0, NON_NEGATIVE, "the latent rank: MLA's d_c, lowrank-kv's r, linformer's k")
    num_latent_heads: int = _legacy(1, POSITIVE, "GLA's h_c latent heads splitting kv_lora_rank", backfill=True)
    rope_head_dim: int = _legacy(0, NON_NEGATIVE, "RoPE width d_r (decoupled key)")
    v_head_dim: int = _legacy(0, NON_NEGATIVE, "value width d_v (0: head_dim)", recorded_as="value_dim")
    hidden_size: int = _legacy(REQUIRED, POSITIVE, "model width d")
    num_layers: int = _legacy(1, POSITIVE, "layers, for whole-model figures")
    rope_theta: float = _legacy(10000.0, FINITE, "RoPE base")
    # YaRN (DeepSeek); factor 1.0 means no context extension.
    rope_scaling_factor: float = _legacy(1.0, FINITE, "YaRN context extension factor (1: none)")
    rope_mscale_all_dim: float = _legacy(0.0, FINITE, "YaRN mscale_all_dim")
    rope_original_max_position: int = _legacy(4096, POSITIVE, "YaRN original context")
    rope_beta_fast: float = _legacy(32.0, FINITE, "YaRN beta_fast")
    rope_beta_slow: float = _legacy(1.0, FINITE, "YaRN beta_slow")
    rms_norm_eps: float = _legacy(1e-6, FINITE, "RMSNorm epsilon")
    q_rank: int = _legacy(0, NON_NEGATIVE, "TPA's query rank R_q", optional=True, backfill=True)
    k_rank: int = _legacy(0, NON_NEGATIVE, "TPA's key rank R_k", optional=True, backfill=True)
    v_rank: int = _legacy(0, NON_NEGATIVE, "TPA's value rank R_v", optional=True, backfill=True)
    index_heads: int = _legacy(0, NON_NEGATIVE, "DSA's indexer heads H_I", optional=True, backfill=True)
    index_head_dim: int = _legacy(0, NON_NEGATIVE, "DSA's indexer width d_I", optional=True, backfill=True)
    topk: int = _legacy(0, NON_NEGATIVE, "DSA's cached tokens per query k", optional=True, backfill=True)
    # A new field goes here, as `shape_field(default, bounds, doc, optional=...)`.

    # Key columns of their own among the case's (schema.ResultRow: dtype, kv_dtype), not here.
    dtype: str = shape_field("bfloat16", None, "compute dtype", key=False)
    kv_dtype: str = shape_field("", None, "what the cache stores: '' = the compute dtype, or a KV_FP8_DTYPES name",
                                key=False)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        validate_shape(self)

    # Derived values: properties, never stored state.
    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def value_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    @property
    def qk_head_dim(self) -> int:
        """MLA d_qk = d_n + d_r."""
        return self.head_dim + self.rope_head_dim

    @property
    def yarn_mscale(self) -> float:
        """DeepSeek's yarn_get_mscale(factor, mscale_all_dim)."""
        if self.rope_scaling_factor <= 1.0 or self.rope_mscale_all_dim == 0.0:
            return 1.0
        return 0.1 * self.rope_mscale_all_dim * math.log(self.rope_scaling_factor) + 1.0

    @property
    def mla_softmax_scale(self) -> float:
        """tau = d_qk^-0.5 * mscale^2: the same scale on every MLA path."""
        return self.qk_head_dim**-0.5 * self.yarn_mscale**2

    @property
    def element_bytes(self) -> int:
        return DTYPES[self.dtype]

    @property
    def cache_dtype(self) -> str:
        """The cache dtype by name: the compute dtype's, or the FP8 format's (the `kv_dtype` column)."""
        return self.kv_dtype or self.dtype

    @property
    def kv_quantized(self) -> bool:
        return self.kv_dtype in KV_FP8_DTYPES

    def key_values(self) -> dict[str, Any]:
        """The shape's columns of the case key (`KEY_FIELDS`), each as the key records it."""
        return {f.name: getattr(self, f.metadata["recorded_as"] or f.name) for f in SHAPE_FIELDS if f.metadata["key"]}

    def replace(self, **overrides: Any) -> AttentionShape:
        """A copy with some fields changed, validated again."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ShapeError(sorted(unknown)[0], "unknown shape field")
        if "dtype" in overrides:
            overrides["dtype"] = canonical_dtype(overrides["dtype"])
        if "kv_dtype" in overrides or "dtype" in overrides:
            overrides["kv_dtype"] = canonical_kv_dtype(overrides.get("kv_dtype", self.kv_dtype),
                                                       overrides.get("dtype", self.dtype))
        return dataclasses.replace(self, **overrides)


SHAPE_FIELDS: tuple[dataclasses.Field[Any], ...] = tuple(f for f in dataclasses.fields(AttentionShape) if f.metadata)
# The shape's columns of the case key, in results.csv order.
KEY_FIELDS: tuple[str, ...] = tuple(f.name for f in SHAPE_FIELDS if f.metadata["key"])
# Fields only some variants read (TPA's ranks, DSA's indexer): a case of a variant that does not
# read one records its default (`shape_for_variant`), so its key holds only what changes its
# computation and a preset's values for them (tiny's) leave other variants' case ids alone.
OPTIONAL_FIELDS: dict[str, Any] = {f.name: f.default for f in SHAPE_FIELDS if f.metadata["optional"]}


def _check_bounds(shape: AttentionShape, bounds: str) -> None:
    for f in SHAPE_FIELDS:
        v = getattr(shape, f.name)
        if f.metadata["bounds"] != bounds or (v is None and f.default is None):  # None: a default of its own
            continue
        if isinstance(v, bool) or not isinstance(v, int if bounds != FINITE else (int, float)):
            ok = False
        else:
            ok = math.isfinite(v) if bounds == FINITE else v > 0 if bounds == POSITIVE else v >= 0
        if not ok:
            kind = "finite number" if bounds == FINITE else f"{bounds} integer"
            raise ShapeError(f.name, f"must be a {kind}, got {v!r}")


def validate_shape(shape: AttentionShape) -> None:
    """Checks that hold for every variant; variant-specific checks live in `validate_for_variant`."""
    # Types before the range checks below, which would raise TypeError on a string.
    for bounds in (POSITIVE, FINITE, NON_NEGATIVE):
        _check_bounds(shape, bounds)
    if shape.num_kv_heads is not None:
        if shape.num_heads % shape.num_kv_heads != 0:
            raise ShapeError(
                "num_kv_heads",
                f"num_heads ({shape.num_heads}) must be divisible by num_kv_heads ({shape.num_kv_heads})",
            )
    if shape.rope_head_dim % 2:
        raise ShapeError("rope_head_dim", f"must be even (RoPE rotates pairs), got {shape.rope_head_dim}")
    if shape.rope_theta <= 0:
        raise ShapeError("rope_theta", f"must be positive, got {shape.rope_theta}")
    if shape.rope_scaling_factor < 1.0:
        raise ShapeError("rope_scaling_factor", f"must be >= 1.0, got {shape.rope_scaling_factor}")
    if shape.dtype not in DTYPES:
        raise ShapeError("dtype", f"unknown dtype {shape.dtype!r} (choose from {', '.join(DTYPES)})")
    if shape.kv_dtype and shape.kv_dtype not in KV_FP8_DTYPES:
        raise ShapeError("kv_dtype", f"unknown cache dtype {shape.kv_dtype!r} (choose from '' for the compute "
                                     f"dtype, {', '.join(KV_FP8_DTYPES)})")
    if not shape.rms_norm_eps > 0:
        raise ShapeError("rms_norm_eps", f"must be positive, got {shape.rms_norm_eps}")


def validate_case_dims(batch: int, seq_len: int, q_len: int) -> None:
    """batch/seq_len/q_len sanity: seq_len is the total context including the q_len new tokens."""
    for name, v in (("batch", batch), ("seq_len", seq_len), ("q_len", q_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ShapeError(name, f"must be a positive integer, got {v!r}")
    if q_len > seq_len:
        raise ShapeError("q_len", f"q_len ({q_len}) cannot exceed seq_len ({seq_len})")


_DEEPSEEK_MLA = dict(head_dim=128, rope_head_dim=64, v_head_dim=128, kv_lora_rank=512, rms_norm_eps=1e-6)

PRESETS: dict[str, AttentionShape] = {
    "deepseek-v3": AttentionShape(
        name="deepseek-v3", hidden_size=7168, num_heads=128, q_lora_rank=1536, num_layers=61,
        rope_scaling_factor=40.0, rope_mscale_all_dim=1.0, **_DEEPSEEK_MLA,
    ),
    "deepseek-v2": AttentionShape(
        name="deepseek-v2", hidden_size=5120, num_heads=128, q_lora_rank=1536, num_layers=60,
        rope_scaling_factor=40.0, rope_mscale_all_dim=0.707, **_DEEPSEEK_MLA,
    ),
    "deepseek-v2-lite": AttentionShape(
        name="deepseek-v2-lite", hidden_size=2048, num_heads=16, q_lora_rank=0, num_layers=27,
        rope_scaling_factor=40.0, rope_mscale_all_dim=0.707, **_DEEPSEEK_MLA,
    ),
    # DeepSeek-V3.2 (inference/config_671B_v3.2.json): V3's MLA plus the lightning indexer.
    "deepseek-v3.2": AttentionShape(
        name="deepseek-v3.2", hidden_size=7168, num_heads=128, q_lora_rank=1536, num_layers=61,
        rope_scaling_factor=40.0, rope_mscale_all_dim=1.0, index_heads=64, index_head_dim=128, topk=2048,
        **_DEEPSEEK_MLA,
    ),
    # Kimi K2 (moonshotai/Kimi-K2-Instruct config.json): DeepSeek-V3's MLA with 64 heads, rope_theta
    # 50000 and YaRN factor 32 with beta_fast = beta_slow = 1.
    "kimi-k2": AttentionShape(
        name="kimi-k2", hidden_size=7168, num_heads=64, q_lora_rank=1536, num_layers=61, rope_theta=50000.0,
        rope_scaling_factor=32.0, rope_mscale_all_dim=1.0, rope_beta_fast=1.0, rope_beta_slow=1.0,
        **_DEEPSEEK_MLA,
    ),
    # T6 medium (tensorgi/T6 config/train_T6_medium_adam_80g8.py): Tensor Product Attention.
    "t6-medium": AttentionShape(
        name="t6-medium", hidden_size=1024, num_heads=47, head_dim=64, num_layers=24, q_rank=6, k_rank=2,
        v_rank=2, rms_norm_eps=1e-6,
    ),
    "llama-3-8b": AttentionShape(
        name="llama-3-8b", hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
        num_layers=32, rope_theta=500000.0, rms_norm_eps=1e-5,
    ),
    "llama-3-70b": AttentionShape(
        name="llama-3-70b", hidden_size=8192, num_heads=64, num_kv_heads=8, head_dim=128,
        num_layers=80, rope_theta=500000.0, rms_norm_eps=1e-5,
    ),
    "mistral-7b": AttentionShape(
        name="mistral-7b", hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
        num_layers=32, rope_theta=1000000.0, rms_norm_eps=1e-5,
    ),
    "qwen2.5-7b": AttentionShape(
        name="qwen2.5-7b", hidden_size=3584, num_heads=28, num_kv_heads=4, head_dim=128,
        num_layers=28, rope_theta=1000000.0,
    ),
    # The GLA paper's 1.47B model (arXiv 2505.21487): G = 4 for gta/gqa, h_c = 2 latent heads of
    # d_g = 2D = 256 for gla, whose 512-wide latent is also MLA's d_c at this shape.
    "gla-xl": AttentionShape(
        name="gla-xl", hidden_size=2048, num_heads=16, num_kv_heads=4, head_dim=128, rope_head_dim=64,
        q_lora_rank=1024, kv_lora_rank=512, num_latent_heads=2, num_layers=24,
    ),
    # Small shapes for smoke tests and CPU sweeps: MLA ranks set so every variant can run.
    "tiny": AttentionShape(
        name="tiny", hidden_size=256, num_heads=8, num_kv_heads=2, head_dim=32, q_lora_rank=64,
        kv_lora_rank=16, num_latent_heads=2, rope_head_dim=16, v_head_dim=32, num_layers=4, dtype="float32",
        q_rank=4, k_rank=2, v_rank=2, index_heads=8, index_head_dim=32, topk=8,
    ),
}


def from_name(name: str, **overrides: Any) -> AttentionShape:
    """A preset, optionally with fields overridden: `from_name('llama-3-8b', num_kv_heads=4)`."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ShapeError("model", f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None
    return base.replace(**overrides) if overrides else base
