"""Claims about the caches of Tensor Product Attention and DeepSeek Sparse Attention, measured
from the `claims` suite's rows (the cache tensors' real bytes), beside the published figures:

D. T6-medium's TPA caches (R_k + R_v)(H + D) = 444 elements, 888 B per token per layer in bf16
   (Zhang et al. 2025; docs/variants.md, presets).
E. DeepSeek-V3.2 caches the MLA latent plus the indexer key, the key always as 128 FP8 values
   and one fp32 scale (132 B) whatever the latent's dtype: 1,152 + 132 = 1,284 B per token per
   layer with a bf16 latent, 656 + 132 = 788 B in DeepSeek's FP8 layout.
F. At 128K context a DSA decode step reads every indexer key (132 B each: about 17 MB per
   layer) and 2048 latent rows instead of all of them (the whole latent: about 151 MB per
   layer in bf16, 86 MB in FP8): 64x fewer latent bytes. The cache sizes are measured (per token,
   scaled to 131072 tokens: the cache is linear in T); which rows a kernel reads is the
   analytic model's (`cache_traffic_elements`), to be confirmed by a GPU kernel profile.
(That DSA equals dense MLA when T <= k is proved in float64 by tests/test_tpa_dsa.py; no row
column measures it.)

Pure Python and pandas; no torch.
"""

from __future__ import annotations

import pandas as pd

from mlabench import config
from mlabench.claims import ClaimResult, _cache_bytes, _select, _single, _verdict

TPA_SOURCE = "Tensor Product Attention (arXiv:2501.06425), T6-medium config"
DSA_SOURCE = "DeepSeek-V3.2-Exp (inference/config_671B_v3.2.json); FlashMLA's FP8 sparse cache layout"
CONTEXT = 131072
MB = 1e6


def _per_token_bytes(rows: pd.DataFrame) -> tuple[float | None, str]:
    """Measured cache bytes per token per layer (cache bytes / (batch * seq_len)), and a note."""
    if rows.empty:
        return None, ""
    cache, column = _cache_bytes(rows)
    kept = rows.loc[cache.index]
    tokens = pd.to_numeric(kept["batch"], errors="coerce") * pd.to_numeric(kept["seq_len"], errors="coerce")
    value, note = _single((cache / tokens).dropna())
    return value, "; ".join([f"from {column}"] + ([note] if note else []))


def _width(dtype: str) -> int:
    return config.dtype_bytes(dtype)


def _claim_tpa(rows: pd.DataFrame) -> list[ClaimResult]:
    sel = _select(rows, model="t6-medium", variant="tpa", dtype="bfloat16")
    measured, note = _per_token_bytes(sel)
    gap = "no t6-medium bfloat16 tpa rows in the claims suite"
    return [ClaimResult("T6-medium TPA caches (R_k + R_v)(H + D) = 444 elements per token per layer (bf16)",
                        TPA_SOURCE, 888.0, measured, "B/token/layer", _verdict(888.0, measured), note or gap)]


def _claim_dsa(rows: pd.DataFrame) -> list[ClaimResult]:
    dtype = "bfloat16"
    dsa, dsa_note = _per_token_bytes(_select(rows, model="deepseek-v3.2", variant="dsa", dtype=dtype))
    mla, mla_note = _per_token_bytes(_select(rows, model="deepseek-v3.2", variant="mla-absorbed", dtype=dtype))
    gap = "no deepseek-v3.2 bfloat16 dsa / mla-absorbed rows in the claims suite"
    b = _width(dtype)
    index_row = 128 + 4  # 128 FP8 values and one fp32 scale, in every dtype
    expected = 576 * b + index_row
    index_expected = index_row * CONTEXT / MB
    index_key = dsa - mla if dsa is not None and mla is not None else None
    index_mb = index_key * CONTEXT / MB if index_key is not None else None
    latent_mb = mla * CONTEXT / MB if mla is not None else None
    fp8 = "a FP8 latent (656 B, the kv_dtype axis) makes it 788 B"
    return [
        ClaimResult("DeepSeek-V3.2 caches a bf16 latent (576 values) + the FP8 indexer key (132 B) per token per "
                    "layer", DSA_SOURCE, float(expected), dsa, "B/token/layer", _verdict(float(expected), dsa),
                    (f"{dsa_note}; {fp8}" if dsa is not None else gap)),
        ClaimResult("DSA at 128K reads every indexer key: 128 FP8 values + one fp32 scale per token, ~17 MB per layer",
                    DSA_SOURCE, index_expected, index_mb, "MB/layer", _verdict(index_expected, index_mb),
                    (f"dsa minus mla-absorbed cache bytes per token x {CONTEXT}" if index_mb is not None
                     else gap)),
        ClaimResult("DSA at 128K reads 2048 latent rows, not the whole latent (~151 MB per layer in bf16, 86 MB in "
                    "FP8)", DSA_SOURCE, 576 * b * CONTEXT / MB, latent_mb, "MB/layer (whole latent)",
                    _verdict(576 * b * CONTEXT / MB, latent_mb),
                    (f"whole latent measured ({mla_note}); reading 2048 of {CONTEXT} rows is the analytic model's "
                     f"64x, to confirm on a GPU" if latent_mb is not None else gap)),
    ]


def sparse_claims(rows: pd.DataFrame) -> list[ClaimResult]:
    """Claims D-F from the claims suite's rows (already filtered to suite == 'claims')."""
    return _claim_tpa(rows) + _claim_dsa(rows)
