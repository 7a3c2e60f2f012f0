"""One rank's shard of an attention layer: which heads it holds, and its slices of the full
layer's weights and cache.

Every rank builds the same full layer (same seed) and keeps only its slices, so the sum of
the ranks' outputs is the unsharded layer's output and can be checked against it exactly.
The cuts follow the serving engines:

- query heads (q_proj, q_b_proj, GLA's W_uQ_rope, TPA's head factors W_A_*) are
  column-parallel and `o_proj` (TPA's `c_proj`) row-parallel, its bias on rank 0 only, so
  one all-reduce of the output ends the step (vLLM `vllm/model_executor/layers/linear.py`,
  ColumnParallelLinear / RowParallelLinear);
- GQA/MQA/GTA: KV heads split when N <= G, each rank keeping the heads its query heads read;
  past G one KV head per rank, copied (vLLM `vllm/model_executor/models/llama.py`,
  LlamaAttention, and QKVParallelLinear's `num_kv_head_replicas` in `linear.py`); N must
  divide G or be a multiple of it (`AttentionVariant.check_tp`);
- MLA (every strategy) and DSA: `kv_a_proj_with_mqa` and the latent cache (and DSA's indexer
  with its key cache) replicated, `q_b_proj` and `kv_b_proj` split by head (vLLM
  `vllm/model_executor/models/deepseek_v2.py`, DeepseekV2MLAAttention; SGLang
  `python/sglang/srt/models/deepseek_v2.py`); mla-expanded caches per-head K and V, which
  split with the heads;
- GLA: the latent heads split with their query heads like GQA's KV heads (replicated past
  h_c), the shared RoPE key on every rank; TPA: the head factors A split, the token factors
  B replicated; lowrank-kv: the per-head latents split.

Linformer has no shard: its K and V come from a [k, n] projection along the sequence axis,
fixed per length and with no decode step, and no serving engine splits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mlabench.config import AttentionShape
from mlabench.errors import UnsupportedError
from mlabench.variants import build_variant
from mlabench.variants.base import AttentionVariant
from mlabench.variants.gla import _GLABase
from mlabench.variants.gqa import GroupedQueryAttention
from mlabench.variants.gta import GroupedTiedAttention
from mlabench.variants.linformer import Linformer
from mlabench.variants.lowrank_kv import LowRankKV
from mlabench.variants.mla import _MLABase
from mlabench.variants.tpa import _TPABase

Width = Callable[[AttentionShape], int]


@dataclass(frozen=True)
class RankSplit:
    """The query heads and KV groups one rank of `world` holds."""

    rank: int
    world: int
    heads: range
    groups: range

    @classmethod
    def of(cls, num_heads: int, num_groups: int, rank: int, world: int) -> RankSplit:
        per_rank = num_heads // world
        heads = range(rank * per_rank, (rank + 1) * per_rank)
        if world <= num_groups:
            per = num_groups // world
            return cls(rank, world, heads, range(rank * per, (rank + 1) * per))
        group = heads.start // (num_heads // num_groups)  # past G: the one group these heads read, copied
        return cls(rank, world, heads, range(group, group + 1))


@dataclass(frozen=True)
class Cut:
    """How a tensor of the full layer is cut: along `axis` it holds blocks of `width` elements,
    one per head (or KV group), then `tail` elements every rank keeps (the RoPE key after GLA's
    latent heads, TPA's B factors after its A factors)."""

    axis: int
    over: str  # "heads" or "groups"
    width: Width
    tail: Width = lambda sh: 0

    def apply(self, t: Tensor, sh: AttentionShape, split: RankSplit) -> Tensor:
        axis = self.axis % t.dim()
        width, tail = self.width(sh), self.tail(sh)
        blocks = t.shape[axis] - tail
        keep = torch.tensor(list(split.heads if self.over == "heads" else split.groups), device=t.device)
        cut = t.narrow(axis, 0, blocks).unflatten(axis, (blocks // width, width)).index_select(axis, keep)
        parts = [cut.flatten(axis, axis + 1)] + ([t.narrow(axis, blocks, tail)] if tail else [])
        return torch.cat(parts, dim=axis)


def _one(sh: AttentionShape) -> int:
    return 1


def _head_dim(sh: AttentionShape) -> int:
    return sh.head_dim


def _qk(sh: AttentionShape) -> int:
    return sh.qk_head_dim


def _value(sh: AttentionShape) -> int:
    return sh.value_dim


@dataclass(frozen=True)
class ShardRule:
    """A family's cuts: parameter and cache names -> Cut; what is not named is replicated.
    `row_parallel`: the output projection, whose bias only rank 0 adds."""

    weights: dict[str, Cut]
    caches: dict[str, Cut] = field(default_factory=dict)
    row_parallel: str = "o_proj"
    # The shard's shape fields; num_kv_heads None: the variant sets it from the shard's heads.
    local_fields: Callable[[AttentionShape, RankSplit], dict[str, int | None]] = \
        lambda sh, split: {"num_heads": len(split.heads), "num_kv_heads": None}


_HEAD_ROWS = Cut(0, "heads", _head_dim)
_OUT_COLS = Cut(1, "heads", _value)

_GQA = ShardRule(
    weights={"q_proj.weight": _HEAD_ROWS, "k_proj.weight": Cut(0, "groups", _head_dim),
             "v_proj.weight": Cut(0, "groups", _head_dim), "o_proj.weight": _OUT_COLS},
    caches={"k_cache": Cut(2, "groups", _one), "v_cache": Cut(2, "groups", _one)},
    local_fields=lambda sh, split: {"num_heads": len(split.heads), "num_kv_heads": len(split.groups)})

_GTA = ShardRule(
    weights={"q_proj.weight": _HEAD_ROWS, "kv_proj.weight": Cut(0, "groups", _head_dim), "o_proj.weight": _OUT_COLS},
    caches={"kv_cache": Cut(2, "groups", _one)},  # k_pe_cache: the one RoPE key, on every rank
    local_fields=_GQA.local_fields)

_MLA = ShardRule(
    weights={"q_proj.weight": Cut(0, "heads", _qk), "q_b_proj.weight": Cut(0, "heads", _qk),
             "kv_b_proj.weight": Cut(0, "heads", lambda sh: sh.head_dim + sh.value_dim), "o_proj.weight": _OUT_COLS},
    caches={"k_cache": Cut(2, "heads", _one), "v_cache": Cut(2, "heads", _one)})  # mla-expanded's per-head K, V

_LOWRANK = ShardRule(
    weights={"q_proj.weight": _HEAD_ROWS, "k_proj.weight": Cut(0, "heads", lambda sh: sh.kv_lora_rank),
             "v_proj.weight": Cut(0, "heads", lambda sh: sh.kv_lora_rank), "k_up_proj": Cut(0, "heads", _one),
             "v_up_proj": Cut(0, "heads", _one), "o_proj.weight": _OUT_COLS},
    caches={"k_cache": Cut(2, "heads", _one), "v_cache": Cut(2, "heads", _one)})

_TPA = ShardRule(
    weights={f"W_A_{x}.weight": Cut(0, "heads", lambda sh, x=x: getattr(sh, f"{x}_rank")) for x in "qkv"}
    | {"c_proj.weight": Cut(1, "heads", _head_dim)},
    caches={f"{x}_factors": Cut(-1, "heads", lambda sh, x=x: getattr(sh, f"{x}_rank"),
                                lambda sh, x=x: getattr(sh, f"{x}_rank") * sh.head_dim) for x in "kv"},
    row_parallel="c_proj")


def _gla_latent(sh: AttentionShape) -> int:
    return sh.kv_lora_rank // sh.num_latent_heads


_GLA_LATENT = Cut(0, "groups", _gla_latent, lambda sh: sh.rope_head_dim)
_GLA = ShardRule(
    weights={"W_q.weight": Cut(0, "heads", _qk), "W_q.bias": Cut(0, "heads", _qk),
             "W_uQ_rope.weight": Cut(0, "heads", _qk), "W_uQ_rope.bias": Cut(0, "heads", _qk),
             "W_dKV.weight": _GLA_LATENT, "W_dKV.bias": _GLA_LATENT, "o_proj.weight": _OUT_COLS},
    caches={"kv_cache": Cut(-1, "groups", _gla_latent, lambda sh: sh.rope_head_dim)},
    local_fields=lambda sh, split: {"num_heads": len(split.heads), "num_latent_heads": len(split.groups),
                                    "kv_lora_rank": len(split.groups) * _gla_latent(sh), "num_kv_heads": None})

# Most specific first: the rule of a variant is that of its first base class listed here.
RULES: tuple[tuple[type[AttentionVariant], ShardRule], ...] = (
    (GroupedQueryAttention, _GQA), (GroupedTiedAttention, _GTA), (_MLABase, _MLA), (_GLABase, _GLA),
    (_TPABase, _TPA), (LowRankKV, _LOWRANK))


def shard_rule(cls: type[AttentionVariant]) -> ShardRule:
    """The cuts of a variant; UnsupportedError with the reason for one that has none."""
    for base, rule in RULES:
        if issubclass(cls, base):
            return rule
    if issubclass(cls, Linformer):
        raise UnsupportedError(f"{cls.name} has no tensor-parallel split: its keys and values come from a [k, n] "
                               "projection along the sequence axis, fixed per length, with no decode step; no "
                               "serving engine shards it")
    raise UnsupportedError(f"{cls.name} has no tensor-parallel split")


def rank_split(module: AttentionVariant, rank: int, world: int) -> RankSplit:
    sh = module.shape
    type(module).check_tp(sh, world)
    return RankSplit.of(sh.num_heads, type(module).tp_groups(sh), rank, world)


def local_shape(module: AttentionVariant, split: RankSplit) -> AttentionShape:
    """The shape of one rank's shard: its heads (and KV groups or latent heads)."""
    return module.shape.replace(**shard_rule(type(module)).local_fields(module.shape, split))


def _gla_up_weights(full: AttentionVariant, split: RankSplit) -> dict[str, Tensor]:
    """GLA's per-latent-head norms and up-projections, renumbered from 1 on the rank; past h_c
    the one latent head's up-projection keeps only the rows of this rank's query heads."""
    sh = full.shape
    per_latent = sh.num_heads // sh.num_latent_heads
    rows = sh.head_dim + sh.value_dim
    out: dict[str, Tensor] = {}
    for local, j in enumerate(split.groups, start=1):
        first = max(split.heads.start - j * per_latent, 0)
        count = min(per_latent, len(split.heads))
        up = getattr(full, f"W_ukv_{j + 1}")
        out[f"W_ukv_{local}.weight"] = up.weight[first * rows:(first + count) * rows]
        out[f"W_ukv_{local}.bias"] = up.bias[first * rows:(first + count) * rows]
        out[f"kv_norm_{local}.weight"] = getattr(full, f"kv_norm_{j + 1}").weight
    return out


@torch.no_grad()
def shard_module(full: AttentionVariant, rank: int, world: int, device: torch.device) -> AttentionVariant:
    """Rank `rank` of `world`'s shard of `full` on `device`: the same variant at its local shape,
    holding its slices of full's weights. Its cache is allocated by `shard_cache`."""
    cls, sh = type(full), full.shape
    rule = shard_rule(cls)
    split = rank_split(full, rank, world)
    local = build_variant(cls.name, local_shape(full, split), device, full.weight_dtype)
    weights: dict[str, Tensor] = {}
    for name, t in full.state_dict().items():
        if name in rule.weights:
            weights[name] = rule.weights[name].apply(t, sh, split)
        elif name == f"{rule.row_parallel}.bias":
            weights[name] = t if rank == 0 else torch.zeros_like(t)  # added once, after the all-reduce
        elif not name.startswith(("W_ukv_", "kv_norm_")) or not issubclass(cls, _GLABase):
            weights[name] = t
    if issubclass(cls, _GLABase):
        weights.update(_gla_up_weights(full, split))
    local.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
    return local


@torch.no_grad()
def shard_cache(full: AttentionVariant, local: AttentionVariant, rank: int, world: int) -> None:
    """Allocate the shard's cache at full's batch and length and copy in its slices of full's
    cache (cut like the weights; a cache the rule does not name, its FP8 scales included, is
    replicated whole). A cut cache must hold plain values: FP8 rows and their scales are not cut."""
    rule, split = shard_rule(type(full)), rank_split(full, rank, world)
    for name, t in full.cache_tensors().items():
        if name in rule.caches and t.dtype != full.weight_dtype:
            raise UnsupportedError(f"{full.name}'s {name} is stored in {t.dtype}, with scales: an FP8 cache "
                                   "that splits over the ranks is not sharded")
    local.allocate_cache(full.batch, full.max_seq_len)
    for name, t in full.cache_tensors().items():
        cut = rule.caches.get(name)
        local.cache_tensors()[name].copy_(cut.apply(t, full.shape, split) if cut is not None else t)
