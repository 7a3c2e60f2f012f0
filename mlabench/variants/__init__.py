"""The attention variants. Importing this package registers every one of them.

    from mlabench.variants import build_variant
    m = build_variant("mla-absorbed", from_name("deepseek-v2-lite"), "cuda", torch.bfloat16)
    m.allocate_cache(batch=8, max_seq_len=4096)
    y = m(x, start_pos=0)          # prefill, writes the cache
    y = m(x_new, start_pos=4095)   # decode step

Adding a variant is one module here (its math, cache layout and cost model, registered
with `@register_variant`) and one import line below; the import order is the order in
which listings and tables show the variants.
"""

# isort: off
from mlabench.variants import gqa  # noqa: F401  (registration: mha, mqa, gqa)
from mlabench.variants import mla  # noqa: F401  (mla-expanded, mla-latent, mla-absorbed)
from mlabench.variants import lowrank_kv  # noqa: F401
from mlabench.variants import linformer  # noqa: F401
from mlabench.variants import gta  # noqa: F401
from mlabench.variants import gla  # noqa: F401  (gla-expanded, gla-absorbed)
from mlabench.variants import tpa  # noqa: F401  (tpa, tpa-factorized)
from mlabench.variants import dsa  # noqa: F401
# isort: on
from mlabench.variants.attention import CoreAttention, eager_attention
from mlabench.variants.base import AttentionVariant
from mlabench.variants.registry import (
    VARIANT_CLASSES,
    build_variant,
    register_variant,
    shape_for_variant,
    variant_class,
    variant_names,
)

__all__ = ["VARIANT_CLASSES", "AttentionVariant", "CoreAttention", "build_variant", "eager_attention",
           "register_variant", "shape_for_variant", "variant_class", "variant_names"]
