"""Launch configuration of the fused MLA decode kernel: checks, defaults, split heuristic.

Plain Python on shapes and numbers (no triton; the one device query is the SM count in
`num_sms`), so the choices can be unit-tested anywhere and recorded per benchmark row.
`mla_decode` resolves its launch through `mla_decode_config`; a backend calls the same
function up front to know, and record, exactly what will run. Defaults and their reasons,
with the offline sm_90a compile predictions for every configuration `auto_configs` lists
(`python -m mlabench.kernels.offline_compile`), are in NOTES.md ("Launch configuration").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict, Unpack

import torch
from torch import Tensor

__all__ = [
    "LAUNCH_KNOBS",
    "LaunchConfig",
    "LaunchKnobs",
    "auto_configs",
    "auto_fp8_configs",
    "check_inputs",
    "choose_config",
    "ctas_per_sm",
    "default_block_h",
    "default_block_n",
    "default_num_splits",
    "default_num_warps",
    "launch_value_error",
    "mla_decode_config",
    "num_sms",
]

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Defaults per cache element size, from the offline sm_90a compile (NOTES.md, "Launch
# configuration"): the largest tiles that compile without register spills.
# 16-bit: rows <= 16 -> 16 x 32 tiles, 4 warps; more rows -> 32 x 32, 8 warps (32 rows at
# 4 warps spills). BLOCK_H = 64, the only M at which Triton emits Hopper wgmma for this
# kernel (one warpgroup per 64 rows), spills at 4, 8 and 16 warps, so the launcher never
# picks it; it stays available as an explicit option.
# fp32 (IEEE dots, no tensor cores): 32-token tiles spill, so 16 x 16 tiles, 4 warps.
DEFAULT_BLOCK_N = {2: 32, 4: 16}
# An FP8 cache converts each KV tile to fp32 in registers before the MMA. At DeepSeek dims the
# sm_90a compile spills with 16-bit's tiles (16 x 32 at 4 warps: 144 B; 32 x 16 at 8 warps: 592 B)
# and is clean at 16 rows x 16 tokens over 8 warps (240 registers): that one configuration,
# whatever the row count (NOTES.md's table has it).
DEFAULT_BLOCK_N_FP8 = 16
FP8_BLOCK_H = 16
FP8_NUM_WARPS = 8
# Three stages: with two, the compiled sm_90 loop keeps one KV buffer in flight and waits
# for it fully each iteration; three double-buffers the next tile while the current one is
# multiplied (no spills, shared memory well under the 227 KiB limit).
DEFAULT_NUM_STAGES = 3

# Split-KV heuristic. A wave is CTAS_PER_SM resident CTAs on every SM, where the compile
# table shows they fit: two 4-warp CTAs (<= 184 registers per thread, <= 111 KiB shared
# each), or one 8-warp CTA (171 registers x 256 threads leave no room for a second) - 8
# warps per SM either way. 132 SMs is an H100 / H200 SXM (used when no device is queried).
CTAS_PER_SM = 2
WARPS_PER_SM = 8
DEFAULT_NUM_SMS = 132
# A split must keep at least this many KV blocks so its fixed cost (Q load, partial-output
# write, combine read) stays amortised; and no more than MAX_SPLITS splits per sequence.
MIN_BLOCKS_PER_SPLIT = 4
MAX_SPLITS = 128
# Splitting stops once the unsplit grid already fills this share of one wave.
_FULL_ENOUGH = 0.8
# Among split counts, take the smallest whose wave efficiency is within this factor of the best.
_EFFICIENCY_SLACK = 0.85


@dataclass(frozen=True)
class LaunchConfig:
    """One launch of the split kernel: tile sizes, warps, pipeline stages and KV splits."""

    block_h: int  # query rows (S*H of one sequence) per program: the M of every tl.dot
    block_n: int  # KV tokens per tile
    num_warps: int
    num_stages: int  # software-pipeline depth of the KV loop
    num_splits: int  # KV splits per sequence (1: no combine pass)

    @property
    def detail(self) -> str:
        """All five values, in the form recorded in a row's `backend_detail`."""
        return (f"block_h={self.block_h},block_n={self.block_n},num_warps={self.num_warps},"
                f"num_stages={self.num_stages},num_splits={self.num_splits}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


# name -> (predicate, what a good value is). Upper bounds keep a typo (block_n=5120) from
# becoming a kernel that cannot compile or would take minutes to.
_LAUNCH_RULES = {
    "block_h": (lambda v: _is_int(v) and _is_pow2(v) and 16 <= v <= 128, "a power of two in [16, 128]"),
    "block_n": (lambda v: _is_int(v) and _is_pow2(v) and 16 <= v <= 256, "a power of two in [16, 256]"),
    "num_warps": (lambda v: _is_int(v) and _is_pow2(v) and 1 <= v <= 16, "a power of two in [1, 16]"),
    "num_stages": (lambda v: _is_int(v) and 1 <= v <= 8, "an integer in [1, 8]"),
    "num_splits": (lambda v: _is_int(v) and 1 <= v <= 4096, "an integer in [1, 4096]"),
}


LAUNCH_KNOBS = tuple(_LAUNCH_RULES)


class LaunchKnobs(TypedDict, total=False):
    """The tile knobs a caller may fix, passed on as keywords from `mla_decode` to `choose_config`
    (absent or None: the default). `num_splits`, chosen after them, is a parameter of its own."""

    block_h: int | None
    block_n: int | None
    num_warps: int | None
    num_stages: int | None


def launch_value_error(name: str, value: object) -> str | None:
    """None if ``value`` is valid for launch knob ``name`` (None means auto); else what is wrong,
    as "must be ..., got ..." for the caller to prefix with the knob's name."""
    if value is None:
        return None
    ok, want = _LAUNCH_RULES[name]
    return None if ok(value) else f"must be {want}, got {value!r}"


def default_block_h(rows: int, elem_bytes: int = 2) -> int:
    """Row-block size for ``rows`` = S*H query rows per sequence and the cache element size."""
    if elem_bytes >= 4:
        return 16
    return 32 if rows > 16 else 16


def default_block_n(elem_bytes: int = 2, kv_fp8: bool = False) -> int:
    """KV tile length for the query element size (fp32 tiles are half as long) and an FP8 cache."""
    return DEFAULT_BLOCK_N_FP8 if kv_fp8 else DEFAULT_BLOCK_N[4 if elem_bytes >= 4 else 2]


def default_num_warps(block_h: int) -> int:
    """4 warps up to 16 rows; 8 (two warpgroups) above, which halves the accumulator per thread."""
    return 4 if block_h <= 16 else 8


def ctas_per_sm(num_warps: int) -> int:
    """Resident CTAs per SM the split heuristic plans for: 8 warps per SM, at most CTAS_PER_SM CTAs."""
    return max(1, min(CTAS_PER_SM, WARPS_PER_SM // num_warps))


def max_splits_for(max_seqlen: int, block_n: int) -> int:
    """The most splits a ``max_seqlen``-token cache supports while each split keeps its minimum blocks."""
    return max(1, min(MAX_SPLITS, max_seqlen // (MIN_BLOCKS_PER_SPLIT * block_n)))


def wave_efficiency(programs: int, slots: int) -> float:
    """Share of the CTA slots used over the waves ``programs`` CTAs need (1.0 = whole waves)."""
    return programs / (math.ceil(programs / slots) * slots)


def default_num_splits(
    batch: int,
    num_row_blocks: int,
    max_seqlen: int,
    block_n: int = 32,
    num_sms: int = DEFAULT_NUM_SMS,
    ctas_per_sm: int = CTAS_PER_SM,
) -> int:
    """KV splits per sequence, so the grid fills ``ctas_per_sm`` CTAs per SM in whole waves.

    FlashAttention-2's split heuristic (``num_splits_heuristic``), with a wave of
    ``num_sms * ctas_per_sm`` CTAs: no split when ``batch * num_row_blocks`` already fills
    80% of a wave; otherwise the smallest split count whose wave efficiency (CTAs / CTA slots
    over the waves they need) is within 85% of the best reachable. Split counts are bounded
    by ``max_splits_for(max_seqlen, block_n)``. ``max_seqlen`` is the cache capacity T_max:
    reading the actual lengths would sync the device. Non-decreasing in ``max_seqlen``.
    """
    base = max(1, batch * num_row_blocks)
    slots = max(1, num_sms * ctas_per_sm)
    if base >= _FULL_ENOUGH * slots:
        return 1
    candidates = range(1, max_splits_for(max_seqlen, block_n) + 1)
    eff = {s: wave_efficiency(base * s, slots) for s in candidates}
    best = max(eff.values())
    return min(s for s in candidates if eff[s] >= _EFFICIENCY_SLACK * best)


def choose_config(
    batch: int,
    rows: int,
    max_seqlen: int,
    elem_bytes: int = 2,
    num_sms: int = DEFAULT_NUM_SMS,
    *,
    num_splits: int | None = None,
    kv_fp8: bool = False,
    **knobs: Unpack[LaunchKnobs],
) -> LaunchConfig:
    """The launch for ``batch`` sequences of ``rows`` = S*H query rows over a ``max_seqlen`` cache
    of ``elem_bytes``-byte elements (2: bf16/fp16, 4: fp32).

    Every knob left as None gets its default; the split count is chosen after the block
    sizes (it depends on the number of row blocks and on block_n). Raises ValueError naming
    the first invalid knob, TypeError for a name that is not a knob.
    """
    given = {**knobs, "num_splits": num_splits}
    for name, value in given.items():
        if name not in _LAUNCH_RULES:
            raise TypeError(f"choose_config: {name!r} is not a launch knob ({', '.join(LAUNCH_KNOBS)})")
        err = launch_value_error(name, value)
        if err is not None:
            raise ValueError(f"{name} {err}")
    block_h, block_n = knobs.get("block_h"), knobs.get("block_n")
    num_warps, num_stages = knobs.get("num_warps"), knobs.get("num_stages")
    bh = block_h if block_h is not None else (FP8_BLOCK_H if kv_fp8 else default_block_h(rows, elem_bytes))
    bn = block_n if block_n is not None else default_block_n(elem_bytes, kv_fp8)
    warps = num_warps if num_warps is not None else (FP8_NUM_WARPS if kv_fp8 else default_num_warps(bh))
    stages = num_stages if num_stages is not None else DEFAULT_NUM_STAGES
    if num_splits is None:
        num_splits = default_num_splits(batch, -(-rows // bh), max_seqlen, bn, num_sms, ctas_per_sm(warps))
    return LaunchConfig(bh, bn, warps, stages, num_splits)


def num_sms(device: torch.device) -> int:
    """SM count of ``device``; DEFAULT_NUM_SMS off CUDA (the interpreter has no SMs to fill)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


def mla_decode_config(
    q: Tensor,
    kv_cache: Tensor,
    num_splits: int | None = None,
    *,
    kv_fp8: bool = False,
    kv_len: int | None = None,
    latent_heads: int = 1,
    **knobs: Unpack[LaunchKnobs],
) -> LaunchConfig:
    """The launch configuration ``mla_decode`` uses for these arguments (None = default); with G
    latent heads each sequence is G independent problems of S*H/G query rows. ``kv_len``: the
    longest sequence's slots, for a paged cache whose tensor is the pool."""
    B, S, H, _ = q.shape
    t_max = kv_cache.shape[1] if kv_len is None else kv_len
    return choose_config(B * latent_heads, S * H // latent_heads, t_max, q.element_size(), num_sms(q.device),
                         num_splits=num_splits, kv_fp8=kv_fp8, **knobs)


def auto_configs() -> dict[LaunchConfig, tuple[str, ...]]:
    """Every (block_h, block_n, num_warps, num_stages) the launcher picks on its own -> its dtypes.

    ``num_splits`` is a runtime argument, not compiled in; the entries carry 2 (the
    split + combine path) and the compile check also builds the single-split variant.
    """
    configs: dict[LaunchConfig, tuple[str, ...]] = {}
    for elem_bytes, dtypes in ((2, ("bf16", "fp16")), (4, ("fp32",))):
        for rows in (1, 128):  # one row block of 16 and a block of 32 or more
            bh = default_block_h(rows, elem_bytes)
            cfg = LaunchConfig(bh, default_block_n(elem_bytes), default_num_warps(bh), DEFAULT_NUM_STAGES, 2)
            configs[cfg] = dtypes
    return configs


def auto_fp8_configs() -> list[LaunchConfig]:
    """Every configuration the launcher picks on its own over an FP8 cache (16-bit queries)."""
    return [LaunchConfig(FP8_BLOCK_H, DEFAULT_BLOCK_N_FP8, FP8_NUM_WARPS, DEFAULT_NUM_STAGES, 2)]


def _desc(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


FP8_KV_DTYPES = ("fp8_e4m3", "fp8_e5m2")


def fp8_row_bytes(head_dim_v: int, rope_dim: int) -> int:
    """Bytes of one FP8 latent row: head_dim_v FP8 values, one fp32 scale per 128, rope_dim bf16."""
    return head_dim_v + 4 * math.ceil(head_dim_v / 128) + 2 * rope_dim


def check_inputs(
    q: Tensor, kv_cache: Tensor, cache_seqlens: Tensor, head_dim_v: int, softmax_scale: float, kv_dtype: str = "",
    block_table: Tensor | None = None,
    latent_heads: int = 1,
) -> None:
    """Raise ValueError naming the first offending argument of ``mla_decode``."""
    if not isinstance(q, Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4-D tensor [B, S, H, D], got {_desc(q)}")
    if not isinstance(kv_cache, Tensor) or kv_cache.dim() != 3:
        raise ValueError(
            f"kv_cache must be a 3-D tensor [B, T_max, D] (squeeze the KV-head dim), got {_desc(kv_cache)}"
        )
    if not isinstance(cache_seqlens, Tensor) or cache_seqlens.dim() != 1:
        raise ValueError(f"cache_seqlens must be a 1-D tensor [B], got {_desc(cache_seqlens)}")
    B, S, H, D = q.shape
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q dtype must be one of bf16/fp16/fp32, got {q.dtype}")
    if kv_dtype and kv_dtype not in FP8_KV_DTYPES:
        raise ValueError(f"kv_dtype must be '' or one of {', '.join(FP8_KV_DTYPES)}, got {kv_dtype!r}")
    if kv_dtype and kv_cache.dtype != torch.uint8:
        raise ValueError(f"an {kv_dtype} kv_cache is uint8 rows of bytes, got {kv_cache.dtype}")
    if not kv_dtype and kv_cache.dtype != q.dtype:
        raise ValueError(f"kv_cache dtype {kv_cache.dtype} must match q dtype {q.dtype}")
    if cache_seqlens.dtype != torch.int32:
        raise ValueError(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if kv_cache.device != q.device:
        raise ValueError(f"kv_cache is on {kv_cache.device} but q is on {q.device}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device} but q is on {q.device}")
    if S < 1 or H < 1 or D < 2:
        raise ValueError(f"q shape {tuple(q.shape)} needs S >= 1, H >= 1 and D >= 2")
    if block_table is not None:
        if not isinstance(block_table, Tensor) or block_table.dim() != 2 or block_table.dtype != torch.int32:
            raise ValueError(f"block_table must be a 2-D int32 tensor [B, max pages], got {_desc(block_table)}")
        if block_table.shape[0] != B or block_table.device != q.device:
            raise ValueError(f"block_table {tuple(block_table.shape)} on {block_table.device} does not match "
                             f"q batch {B} on {q.device}")
    elif kv_cache.shape[0] != B:
        raise ValueError(f"kv_cache batch {kv_cache.shape[0]} does not match q batch {B}")
    if not _is_int(latent_heads) or latent_heads < 1 or H % latent_heads:
        raise ValueError(f"latent_heads must be a positive int dividing H={H}, got {latent_heads!r}")
    if kv_dtype and latent_heads > 1:
        raise ValueError(f"an FP8 cache ({kv_dtype}) has one latent head (DeepSeek's layout), got {latent_heads}")
    if not kv_dtype and _is_int(head_dim_v) and kv_cache.shape[2] != D + (latent_heads - 1) * head_dim_v:
        raise ValueError(f"kv_cache last dim {kv_cache.shape[2]} does not match q head dim {D}"
                         + (f" with {latent_heads} latent heads of {head_dim_v}" if latent_heads > 1 else ""))
    if kv_cache.shape[1] > 0 and kv_cache.stride(2) != 1:
        raise ValueError(f"kv_cache last dim must be contiguous (stride 1), got strides {kv_cache.stride()}")
    if cache_seqlens.shape[0] != B:
        raise ValueError(f"cache_seqlens has {cache_seqlens.shape[0]} entries, q batch is {B}")
    if not _is_int(head_dim_v) or not 0 < head_dim_v < D:
        raise ValueError(f"head_dim_v must be an int with 0 < head_dim_v < D={D}, got {head_dim_v!r}")
    if kv_dtype:
        want = fp8_row_bytes(head_dim_v, D - head_dim_v)
        if kv_cache.shape[2] != want or head_dim_v % 4 or (D - head_dim_v) % 2:
            raise ValueError(f"an {kv_dtype} kv_cache row holds {want} bytes for head_dim_v {head_dim_v} and rope "
                             f"dim {D - head_dim_v} (head_dim_v divisible by 4, rope dim even), "
                             f"got {kv_cache.shape[2]}")
        if any(s % 4 for s in kv_cache.stride()[:2]) or kv_cache.storage_offset() % 4:
            raise ValueError(f"an {kv_dtype} kv_cache must be 4-byte aligned rows, got strides {kv_cache.stride()}")
    if (
        isinstance(softmax_scale, bool)
        or not isinstance(softmax_scale, (int, float))
        or not math.isfinite(softmax_scale)
        or softmax_scale <= 0
    ):
        raise ValueError(f"softmax_scale must be a finite positive float, got {softmax_scale!r}")
    # Value checks only where they cost no device sync.
    if cache_seqlens.device.type == "cpu" and B > 0:
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        t_max = kv_cache.shape[1] if block_table is None else kv_cache.shape[1] * block_table.shape[1]
        if lo < S or hi > t_max:
            raise ValueError(
                f"cache_seqlens must lie in [S={S}, T_max={t_max}] (they include the S new "
                f"tokens), got min {lo}, max {hi}"
            )
