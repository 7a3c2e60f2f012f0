"""The cost model MLA and GLA share (GLA's h_c latent heads of d_g each cost what MLA's one of d_c does).

`LatentProjections`: the projections both designs run per new token, as multiply-adds:
queries (through a low-rank q_lora when the shape has one), the latent down-projection to
[c, k_pe] and the output projection.

`ExpandedHeadsCore`: queries and keys of d_qk (= D + d_r) and values of d_v per head, the
shape of MLA's attention whether the cache holds those K, V (mla-expanded) or a latent they
are rebuilt from. `ReExpandedLatentCore` adds what rebuilding them every call costs: the
up-projection over the whole cache, its FLOPs and the expanded K, V written and read, with
`latent_head_dim` the width one query head expands from (d_c for MLA, d_g for GLA).

These are mixins: the variant class lists them before its base, which supplies
`latent_head_dim`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlabench.config import AttentionShape

if TYPE_CHECKING:
    from mlabench.step import Step


class LatentProjections:
    """Multiply-adds per new token of the projections around a latent cache."""

    @classmethod
    def _query_macs(cls, sh: AttentionShape) -> int:
        """The query path's weights (norm weights not included)."""
        d, q_w = sh.hidden_size, sh.num_heads * sh.qk_head_dim
        return d * sh.q_lora_rank + sh.q_lora_rank * q_w if sh.q_lora_rank > 0 else d * q_w

    @classmethod
    def _shared_projection_macs(cls, sh: AttentionShape) -> int:
        """Queries, the latent down-projection and the output projection."""
        return cls._query_macs(sh) + sh.hidden_size * (sh.kv_lora_rank + sh.rope_head_dim) \
            + sh.num_heads * sh.value_dim * sh.hidden_size


class ExpandedHeadsCore:
    """The core reads H heads of d_qk keys and d_v values."""

    @classmethod
    def qo_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.num_heads * sh.qk_head_dim, sh.num_heads * sh.value_dim

    @classmethod
    def core_kv_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.num_heads * sh.qk_head_dim, sh.num_heads * sh.value_dim

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * 2 * sh.num_heads * (sh.qk_head_dim + sh.value_dim) * step.attended_pairs


class ReExpandedLatentCore(ExpandedHeadsCore):
    """The core's K, V are up-projected from the latent cache on every call."""

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        h = sh.num_heads
        expand = 2 * h * cls.latent_head_dim(sh) * (sh.head_dim + sh.value_dim) * step.total
        return step.batch * (2 * h * (sh.qk_head_dim + sh.value_dim) * step.attended_pairs + expand)

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * step.new_tokens * 2 * cls._shared_projection_macs(sh)

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        expanded = step.batch * 2 * step.total * sh.num_heads * (sh.qk_head_dim + sh.value_dim)  # written, read
        return super().cache_traffic_elements(sh, step) + expanded
