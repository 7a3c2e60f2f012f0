"""The attention variants. Importing this package registers every one of them.

    from mlabench.variants import build_variant
    m = build_variant("mla-absorbed", from_name("deepseek-v2-lite"), "cuda", torch.bfloat16)
    m.allocate_cache(batch=8, max_seq_len=4096)
    y = m(x, start_pos=0)          # prefill, writes the cache
    y = m(x_new, start_pos=4095)   # decode step
"""

from mlabench.variants import gqa, linformer, lowrank_kv, mla  # noqa: F401  (registration)
from mlabench.variants.base import AttentionVariant, CoreAttention, eager_attention
from mlabench.variants.registry import VARIANT_CLASSES, build_variant

__all__ = ["VARIANT_CLASSES", "AttentionVariant", "CoreAttention", "build_variant", "eager_attention"]
