"""FP8 KV caches: the two stored layouts, what they cost in bytes, and how values go in and out.

A variant's cache is described by logical tensors (`cache_shapes`, in the compute dtype);
with `kv_dtype` an FP8 format the module stores them in one of two layouts:

- `PerTensorFP8` (the GQA family and every other K/V cache): each cache tensor in FP8 with
  its logical shape, plus one fp32 scale per tensor per layer, stored beside it as
  `<name>_scale` and counted in the cache bytes: value = fp8 * scale. The scale is static,
  as serving engines calibrate it: set from the first data the tensor holds (the random
  context fill, whose values lie in [-sqrt(3), sqrt(3)), or the first write), with
  `HEADROOM` so later tokens up to that many times larger still fit; larger values saturate.
- `LatentFP8` (every latent cache: MLA's, GLA's, DSA's; DeepSeek's FP8 layout that FlashMLA reads): per token
  one row of bytes [d_c FP8 latent | ceil(d_c/128) fp32 scales | d_r RoPE values in bf16],
  d_c + 4*ceil(d_c/128) + 2*d_r bytes (656 at d_c = 512, d_r = 64). Each 128-wide tile of
  the latent has its own scale, per token, the power of two at or above amax/fp8_max (so
  scaling is exact and the largest element uses the format's top binade); the RoPE key
  stays 16-bit because its rotation would lose more than the latent in FP8.

A model may also fix a format for one of its tensors whatever `kv_dtype` says: DeepSeek-V3.2
always stores its indexer key as 128 FP8 values and one fp32 scale, beside a latent in the
compute dtype (`ComputeDtype`) or in FP8 rows (`PerCacheFP8` holds one format per tensor).

Scales are powers of two in both layouts, so dequantizing (fp8 * scale) is exact in fp32.

A contiguous uniform cache is written in place (`store`, `load` on (batch, token) slices).
Ragged and paged caches (variants/cache_map.py) place rows per sequence or per page, so the
step's rows are encoded first (`to_stored`), then placed like any other cache's rows, and
read back gathered, then decoded (`from_stored`): a token's stored row is the same bytes
in every layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mlabench.config import KV_FP8_DTYPES, AttentionShape

TILE = 128  # latent columns per scale (DeepSeek's FP8 layout)
HEADROOM = 4.0  # per-tensor scales leave room for values this many times the calibration data's largest
TILE_LAYOUT = "per token: FP8 latent + one fp32 scale per 128 values, RoPE key in bf16"  # DeepSeek's rows
FILL_BOUND = math.sqrt(3.0)  # largest magnitude random_fill writes: the context's calibration amax

Index = tuple[slice, ...]  # (batch, token) slices of a cache tensor


def torch_fp8(kv_dtype: str) -> torch.dtype:
    return getattr(torch, KV_FP8_DTYPES[kv_dtype])


def fp8_max(kv_dtype: str) -> float:
    return float(torch.finfo(torch_fp8(kv_dtype)).max)


def pow2_scale(amax: Tensor, top: float) -> Tensor:
    """The smallest power of two s with amax / s <= top (1 where amax is 0), in fp32."""
    ratio = amax.float() / top
    return torch.where(ratio > 0, torch.exp2(torch.ceil(torch.log2(ratio.clamp_min(2.0**-126)))),
                       torch.ones_like(ratio))


def quantize(x: Tensor, scale: Tensor, kv_dtype: str) -> Tensor:
    """x / scale in the FP8 format, saturated at its largest finite value (never inf or NaN)."""
    top = fp8_max(kv_dtype)
    return (x.float() / scale).clamp_(-top, top).to(torch_fp8(kv_dtype))


def latent_row_bytes(d_c: int, d_r: int, heads: int = 1) -> int:
    """Bytes of one token's FP8 latent row: d_c FP8 values, one fp32 scale per 128 of each of the
    `heads` latent heads (d_c / heads wide), d_r bf16."""
    return d_c + 4 * heads * math.ceil(d_c // heads / TILE) + 2 * d_r


class PerTensorFP8:
    """Each cache tensor in FP8 with one static fp32 scale per tensor."""

    layout = "per-tensor"  # the short name tables print beside an FP8 figure
    scales = "one fp32 scale per cache tensor per layer"

    def __init__(self, kv_dtype: str):
        self.kv_dtype = kv_dtype
        self.calibrated: set[str] = set()  # tensors whose scale is set (a Python flag: no device sync)

    @staticmethod
    def cache_bytes(sh: AttentionShape, elements: int, tensors: int) -> int:
        return elements + 4 * tensors

    def allocate(self, shapes: dict[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        self.calibrated = set()
        cache: dict[str, Tensor] = {}
        for name, dims in shapes.items():
            cache[name] = torch.zeros(dims, device=device, dtype=torch_fp8(self.kv_dtype))
            cache[f"{name}_scale"] = torch.ones(1, device=device, dtype=torch.float32)
        return cache

    def _calibrate(self, cache: dict[str, Tensor], name: str, amax: Tensor) -> None:
        cache[f"{name}_scale"].copy_(pow2_scale(amax * HEADROOM, fp8_max(self.kv_dtype)).reshape(1))
        self.calibrated.add(name)

    def store(self, cache: dict[str, Tensor], name: str, index: Index, values: Tensor) -> None:
        if name not in self.calibrated:
            self._calibrate(cache, name, values.detach().abs().amax())
        cache[name][index] = quantize(values, cache[f"{name}_scale"], self.kv_dtype)

    def load(self, cache: dict[str, Tensor], name: str, index: Index, dtype: torch.dtype) -> Tensor:
        return (cache[name][index].float() * cache[f"{name}_scale"]).to(dtype)

    def roundtrip(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        """`values` as this cache would store and read them back (fp32), with its calibrated scale."""
        scale = cache[f"{name}_scale"]
        return quantize(values, scale, self.kv_dtype).float() * scale

    # Rows in stored form, for caches whose slots are not one (batch, token) slice (ragged, paged).
    def to_stored(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        if name not in self.calibrated:
            self._calibrate(cache, name, values.detach().abs().amax())
        return quantize(values, cache[f"{name}_scale"], self.kv_dtype)

    def from_stored(self, cache: dict[str, Tensor], name: str, stored: Tensor, dtype: torch.dtype) -> Tensor:
        return (stored.float() * cache[f"{name}_scale"]).to(dtype)

    def calibrate_fill(self, cache: dict[str, Tensor], name: str) -> None:
        """Set the scale of tensor `name` for the random context fill's values."""
        self._calibrate(cache, name, torch.tensor(FILL_BOUND, device=cache[name].device))

    def fill(self, cache: dict[str, Tensor], name: str, length: int, values: Callable[[int], Tensor]) -> None:
        """Slots [0, length) of every sequence from `values(b)` (the unquantized (length, ...) rows)."""
        self.calibrate_fill(cache, name)
        for b in range(cache[name].shape[0]):
            self.store(cache, name, (slice(b, b + 1), slice(0, length)), values(b)[None])


class LatentFP8:
    """A latent cache as DeepSeek's FP8 rows: [d_c fp8 | fp32 scale per 128 | d_r bf16] per token.
    With `heads` latent heads (GLA), each head's d_c / heads columns are tiled on their own, so
    a GPU holding some of the heads holds whole tiles with their scales."""

    layout = "128-tile"
    scales = TILE_LAYOUT

    def __init__(self, kv_dtype: str, d_c: int, d_r: int, heads: int = 1):
        self.kv_dtype, self.d_c, self.d_r, self.heads = kv_dtype, d_c, d_r, heads
        self.head_dim = d_c // heads
        self.head_tiles = math.ceil(self.head_dim / TILE)
        self.tiles = heads * self.head_tiles
        self.row_bytes = latent_row_bytes(d_c, d_r, heads)

    def allocate(self, shapes: dict[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        cache = {}
        for name, (b, t, _) in shapes.items():  # (B, T, d_c + d_r) logical
            cache[name] = torch.zeros((b, t, self.row_bytes), device=device, dtype=torch.uint8)
        return cache

    def parts(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Views of a (..., row bytes) uint8 tensor: the FP8 latent (..., d_c), the scales
        (..., tiles) fp32, the RoPE key (..., d_r) bf16."""
        d_c, end = self.d_c, self.d_c + 4 * self.tiles
        return rows[..., :d_c].view(torch_fp8(self.kv_dtype)), rows[..., d_c:end].view(torch.float32), \
            rows[..., end:].view(torch.bfloat16)

    def encode(self, values: Tensor, out: Tensor) -> None:
        """values (..., d_c + d_r) -> the byte rows `out` (..., row bytes)."""
        latent, scales, rope = self.parts(out)
        c = values[..., : self.d_c].float().unflatten(-1, (self.heads, self.head_dim))  # (..., heads, d_c/heads)
        pad = self.head_tiles * TILE - self.head_dim
        tiles = torch.nn.functional.pad(c, (0, pad)).unflatten(-1, (self.head_tiles, TILE))  # (..., heads, t, 128)
        s = pow2_scale(tiles.abs().amax(-1), fp8_max(self.kv_dtype))  # (..., heads, t)
        fp8 = quantize(tiles, s[..., None], self.kv_dtype).flatten(-2)[..., : self.head_dim]
        latent.copy_(fp8.flatten(-2))
        scales.copy_(s.flatten(-2))
        rope.copy_(values[..., self.d_c:])

    def decode(self, rows: Tensor, dtype: torch.dtype) -> Tensor:
        """Byte rows (..., row bytes) -> values (..., d_c + d_r) in `dtype`."""
        latent, scales, rope = self.parts(rows)
        per_head = scales.unflatten(-1, (self.heads, self.head_tiles)).repeat_interleave(TILE, dim=-1)
        s = per_head[..., : self.head_dim].flatten(-2)  # (..., d_c): each column's tile scale
        return torch.cat((latent.float() * s, rope.float()), dim=-1).to(dtype)

    def roundtrip(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        """`values` as this cache would store and read them back (fp32)."""
        rows = torch.empty((*values.shape[:-1], self.row_bytes), device=values.device, dtype=torch.uint8)
        self.encode(values, rows)
        return self.decode(rows, torch.float32)

    def store(self, cache: dict[str, Tensor], name: str, index: Index, values: Tensor) -> None:
        self.encode(values, cache[name][index])

    def load(self, cache: dict[str, Tensor], name: str, index: Index, dtype: torch.dtype) -> Tensor:
        return self.decode(cache[name][index], dtype)

    def to_stored(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        rows = torch.empty((*values.shape[:-1], self.row_bytes), device=values.device, dtype=torch.uint8)
        self.encode(values, rows)
        return rows

    def from_stored(self, cache: dict[str, Tensor], name: str, stored: Tensor, dtype: torch.dtype) -> Tensor:
        return self.decode(stored, dtype)

    def calibrate_fill(self, cache: dict[str, Tensor], name: str) -> None:
        """Nothing to set: every token's row carries its own scales."""

    def fill(self, cache: dict[str, Tensor], name: str, length: int, values: Callable[[int], Tensor]) -> None:
        for b in range(cache[name].shape[0]):
            self.store(cache, name, (slice(b, b + 1), slice(0, length)), values(b)[None])


class ComputeDtype:
    """A cache tensor kept as computed, in the weights' dtype, beside FP8 ones in a `PerCacheFP8`
    (DeepSeek-V3.2's latent when no kv_dtype is set: its indexer key is FP8 all the same)."""

    layout = scales = ""

    def allocate(self, shapes: dict[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        return {name: torch.zeros(dims, device=device, dtype=dtype) for name, dims in shapes.items()}

    def store(self, cache: dict[str, Tensor], name: str, index: Index, values: Tensor) -> None:
        cache[name][index] = values

    def load(self, cache: dict[str, Tensor], name: str, index: Index, dtype: torch.dtype) -> Tensor:
        return self.from_stored(cache, name, cache[name][index], dtype)

    def roundtrip(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        return values

    def to_stored(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        return values.to(cache[name].dtype)

    def from_stored(self, cache: dict[str, Tensor], name: str, stored: Tensor, dtype: torch.dtype) -> Tensor:
        return stored if stored.dtype == dtype else stored.to(dtype)  # a view when no conversion is due

    def calibrate_fill(self, cache: dict[str, Tensor], name: str) -> None:
        """Nothing to set: no scales."""

    def fill(self, cache: dict[str, Tensor], name: str, length: int, values: Callable[[int], Tensor]) -> None:
        for b in range(cache[name].shape[0]):
            self.store(cache, name, (slice(b, b + 1), slice(0, length)), values(b)[None])


class PerCacheFP8:
    """Several cache tensors, each in its own row format (DeepSeek-V3.2: the latent in DeepSeek's
    FP8 rows or in the compute dtype, the indexer key always as d_I FP8 values with one fp32
    scale per 128)."""

    def __init__(self, formats: dict[str, LatentFP8 | ComputeDtype], scales: str, layout: str):
        self.formats, self.scales, self.layout = formats, scales, layout

    def allocate(self, shapes: dict[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        return {name: self.formats[name].allocate({name: dims}, device, dtype)[name] for name, dims in shapes.items()}

    def store(self, cache: dict[str, Tensor], name: str, index: Index, values: Tensor) -> None:
        self.formats[name].store(cache, name, index, values)

    def load(self, cache: dict[str, Tensor], name: str, index: Index, dtype: torch.dtype) -> Tensor:
        return self.formats[name].load(cache, name, index, dtype)

    def roundtrip(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        return self.formats[name].roundtrip(cache, name, values)

    def fill(self, cache: dict[str, Tensor], name: str, length: int, values: Callable[[int], Tensor]) -> None:
        self.formats[name].fill(cache, name, length, values)

    def to_stored(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        return self.formats[name].to_stored(cache, name, values)

    def from_stored(self, cache: dict[str, Tensor], name: str, stored: Tensor, dtype: torch.dtype) -> Tensor:
        return self.formats[name].from_stored(cache, name, stored, dtype)

    def calibrate_fill(self, cache: dict[str, Tensor], name: str) -> None:
        self.formats[name].calibrate_fill(cache, name)


KVFormat = PerTensorFP8 | LatentFP8 | PerCacheFP8


def stored_by_design(fmt: object, name: str) -> bool:
    """Whether cache tensor `name` is quantized by the model's own design: `fmt` is the variant's
    format with no kv_dtype (DeepSeek-V3.2's FP8 indexer key). A reference on the "unquantized"
    cache still reads such a tensor as stored, as the model itself does."""
    return isinstance(fmt, PerCacheFP8) and not isinstance(fmt.formats[name], ComputeDtype)


def latent_rows(fmt: object) -> bool:
    """Whether the "kv_cache" tensor of a store is held as DeepSeek's FP8 latent rows (alone, or
    beside other tensors, as dsa's indexer key)."""
    if isinstance(fmt, PerCacheFP8):
        return isinstance(fmt.formats.get("kv_cache"), LatentFP8)
    return isinstance(fmt, LatentFP8)


class RoundTrip:
    """The store of a float64 reference on a dequantized FP8 cache: the cache is float64, and the
    rows a step writes go through the FP8 format (with the quantized module's scales) first, so
    the new tokens carry the same quantization as the module's."""

    def __init__(self, fmt: KVFormat, scales: dict[str, Tensor]):
        self.fmt, self.scales = fmt, scales

    def allocate(self, shapes: dict[str, tuple[int, ...]], device: torch.device,
                 dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """A cache the reference allocates afresh is plain tensors in its own dtype (float64)."""
        return {name: torch.zeros(dims, device=device, dtype=dtype) for name, dims in shapes.items()}

    def store(self, cache: dict[str, Tensor], name: str, index: Index, values: Tensor) -> None:
        cache[name][index] = self.fmt.roundtrip(self.scales, name, values).to(cache[name].dtype)

    def load(self, cache: dict[str, Tensor], name: str, index: Index, dtype: torch.dtype) -> Tensor:
        return cache[name][index]

    def to_stored(self, cache: dict[str, Tensor], name: str, values: Tensor) -> Tensor:
        return self.fmt.roundtrip(self.scales, name, values).to(cache[name].dtype)

    def from_stored(self, cache: dict[str, Tensor], name: str, stored: Tensor, dtype: torch.dtype) -> Tensor:
        return stored
