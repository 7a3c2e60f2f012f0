"""Check published claims about KV-cache size and attention parameters against a run's `claims` rows.

Each claim is restated as a number that the `claims` suite measures, and
`evaluate_claims` puts the measurement beside the number the source gives:

A. DeepSeek-V2 paper, Table 1: KV-cache elements per token over l layers
   (MHA 2*n_h*d_h*l, GQA 2*n_g*d_h*l, MQA 2*d_h*l, MLA (d_c + d_r)*l).
B. "Per-head latent K/V at 32 of 128 dims makes a 2K-token single-layer cache
   4x smaller" (MHA 16 MB vs latent 4 MB in the source, which counts elements).
C. "MQA has 0.56 and GQA (8 heads, 4 groups) 0.75 of MHA's attention parameters".
D. The GTA/GLA paper (arXiv 2505.21487) at its 1.47B model (preset gla-xl): GTA-4 about halves
   GQA-4's cache; GLA-2 at TP 2 holds 640 B per token per layer per GPU where MLA holds 1152;
   GLA-2's absorbed decode does about half of MLA's core FLOPs at the same heads.
E. T6-medium's TPA caches (R_k + R_v)(H + D) = 444 elements, 888 B per token per layer in bf16
   (Zhang et al. 2025; docs/variants.md, presets).
F. DeepSeek-V3.2 caches the MLA latent plus the indexer key, the key always as 128 FP8 values
   and one fp32 scale (132 B) whatever the latent's dtype: 1,152 + 132 = 1,284 B per token per
   layer with a bf16 latent, 656 + 132 = 788 B in DeepSeek's FP8 layout.
G. At 128K context a DSA decode step reads every indexer key (132 B each: about 17 MB per
   layer) and 2048 latent rows instead of all of them (the whole latent: about 151 MB per
   layer in bf16, 86 MB in FP8): 64x fewer latent bytes. The cache sizes are measured (per token,
   scaled to 131072 tokens: the cache is linear in T); which rows a kernel reads is the
   analytic model's (`cache_traffic_elements`), to be confirmed by a GPU kernel profile.
(That DSA equals dense MLA when T <= k is proved in float64 by tests/test_tpa_dsa.py; no row
column measures it.)

Pure Python and pandas; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from mlabench import config

Verdict = Literal["holds", "differs", "not measured"]
CLAIMS_SUITE = "claims"
MIB = float(1 << 20)
DEEPSEEK_V2_PAPER = "DeepSeek-V2 paper (arXiv:2405.04434), Table 1"
LATENT_SOURCE = "Per-head low-rank K/V write-up (32 of 128 dims, 2K tokens)"
PARAMS_SOURCE = "MQA/GQA parameter-count write-up (hidden 256, 8 heads)"
GLA_PAPER = "GTA/GLA paper (arXiv:2505.21487), 1.47B model (gla-xl)"
TPA_SOURCE = "Tensor Product Attention (arXiv:2501.06425), T6-medium config"
DSA_SOURCE = "DeepSeek-V3.2-Exp (inference/config_671B_v3.2.json); FlashMLA's FP8 sparse cache layout"
DSA_CONTEXT = 131072
MB = 1e6


@dataclass(frozen=True)
class ClaimResult:
    """One claim beside its measurement; `measured` is None when the run lacks the rows."""

    claim: str
    source: str
    expected: float
    measured: float | None
    unit: str
    verdict: Verdict
    note: str = ""


def _verdict(expected: float, measured: float | None) -> Verdict:
    if measured is None or not math.isfinite(measured):
        return "not measured"
    # Every quantity here is a count or a ratio of counts: equal up to float rounding.
    return "holds" if math.isclose(measured, expected, rel_tol=1e-9, abs_tol=1e-12) else "differs"


def _claims_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The claims suite's rows with the cache in the compute dtype: the claims count elements
    (bytes over the dtype's width), which an FP8 cache with its scales is not."""
    if df.empty or "suite" not in df.columns:
        return df.iloc[0:0]
    rows = df[df["suite"].astype(str) == CLAIMS_SUITE]
    if "kv_dtype" in rows.columns:
        stored = rows["kv_dtype"].fillna("").astype(str)
        rows = rows[(stored == "") | (stored == rows["dtype"].astype(str))]
    return rows


def _select(rows: pd.DataFrame, **equal: object) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for column, value in equal.items():
        if column not in rows.columns:
            return rows.iloc[0:0]
        if isinstance(value, str):
            mask &= rows[column].astype(str) == value
        else:
            mask &= pd.to_numeric(rows[column], errors="coerce") == value
    return rows[mask]


def _cache_bytes(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """The cache tensors' bytes when recorded (the real cache), else the analytic figure."""
    if "kv_cache_bytes_measured" in rows.columns:
        measured = pd.to_numeric(rows["kv_cache_bytes_measured"], errors="coerce")
        if measured.notna().any():
            return measured.dropna(), "kv_cache_bytes_measured"
    return _column(rows, "kv_cache_bytes"), "kv_cache_bytes"


def _single(values: pd.Series) -> tuple[float | None, str]:
    """The value all rows agree on, or the median with a note when they do not."""
    if values.empty:
        return None, ""
    if values.nunique() > 1:
        return float(values.median()), f"rows disagree ({values.min():g}..{values.max():g}); median shown"
    return float(values.iloc[0]), ""


def _int(row: pd.Series, column: str) -> int:
    return int(float(row[column]))


# --- A: DeepSeek-V2 Table 1 -------------------------------------------------------------------------------

_TABLE1: dict[str, tuple[str, Callable[[pd.Series], int]]] = {
    "mha": ("MHA: 2·n_h·d_h·l", lambda r: 2 * _int(r, "num_heads") * _int(r, "head_dim")),
    "gqa": ("GQA: 2·n_g·d_h·l", lambda r: 2 * _int(r, "num_kv_heads") * _int(r, "head_dim")),
    "mqa": ("MQA: 2·d_h·l", lambda r: 2 * _int(r, "head_dim")),
    "mla-absorbed": ("MLA: (d_c + d_r)·l", lambda r: _int(r, "kv_lora_rank") + _int(r, "rope_head_dim")),
}


def _claim_table1(rows: pd.DataFrame) -> list[ClaimResult]:
    model = "deepseek-v2"
    layers = config.PRESETS[model].num_layers
    out: list[ClaimResult] = []
    for variant, (formula, per_layer) in _TABLE1.items():
        text = f"KV cache elements per token, {formula} (DeepSeek-V2, l = {layers})"
        sel = _select(rows, model=model, variant=variant, mode="decode")
        # Expected is the paper's formula evaluated at the row's own widths.
        paper = {"mha": 2 * 128 * 128, "gqa": 2 * 8 * 128, "mqa": 2 * 128, "mla-absorbed": 512 + 64}[variant]
        if sel.empty:
            out.append(ClaimResult(text, DEEPSEEK_V2_PAPER, float(paper * layers), None, "elements/token",
                                   "not measured", f"no {model} {variant} decode rows in the claims suite"))
            continue
        expected = float(per_layer(sel.iloc[0]) * layers)
        cache, column = _cache_bytes(sel)
        kept = sel.loc[cache.index]
        width = kept["dtype"].map(lambda d: config.DTYPES.get(config.DTYPE_ALIASES.get(str(d), str(d)), math.nan))
        tokens = pd.to_numeric(kept["batch"], errors="coerce") * pd.to_numeric(kept["seq_len"], errors="coerce")
        elems = (cache / (tokens * width) * layers).dropna()
        measured, note = _single(elems)
        notes = [f"from {column}"] + ([note] if note else [])
        if per_layer(sel.iloc[0]) != paper:
            notes.append("row widths differ from DeepSeek-V2's; expected uses the row's widths")
        out.append(ClaimResult(text, DEEPSEEK_V2_PAPER, expected, measured, "elements/token",
                               _verdict(expected, measured), "; ".join(notes)))
    return out


# --- B: per-head latent K/V at 32 of 128 dims -------------------------------------------------------------

def _claim_latent(rows: pd.DataFrame) -> list[ClaimResult]:
    base = dict(model="llama-3-8b", dtype="float16", seq_len=2048, batch=1)
    mha_rows = _select(rows, variant="mha", **base)
    lr_rows = _select(rows, variant="lowrank-kv", kv_lora_rank=32, **base)
    mha_cache, column = _cache_bytes(mha_rows)
    lr_cache, lr_column = _cache_bytes(lr_rows)
    mha_bytes, mha_note = _single(mha_cache)
    lr_bytes, lr_note = _single(lr_cache)
    missing = [n for n, v in (("mha", mha_bytes), ("lowrank-kv (rank 32)", lr_bytes)) if v is None]
    gap = f"no llama-3-8b float16 2K-token {' / '.join(missing)} rows in the claims suite" if missing else ""
    sources = sorted({column, lr_column})
    ratio_note = "; ".join([f"from {' and '.join(sources)}"] + [n for n in (mha_note, lr_note) if n])
    ratio = mha_bytes / lr_bytes if mha_bytes is not None and lr_bytes else None
    mha_mib = mha_bytes / MIB if mha_bytes is not None else None
    lr_mib = lr_bytes / MIB if lr_bytes is not None else None
    elements = "the source's 16 MB / 4 MB count elements; in float16 (2 bytes each) they are 32 / 8 MiB"
    return [
        ClaimResult("Per-head latent K/V (32 of 128 dims) makes a 2K-token single-layer cache 4x smaller",
                    LATENT_SOURCE, 4.0, ratio, "x (MHA / latent bytes)", _verdict(4.0, ratio),
                    gap or ratio_note),
        ClaimResult("MHA 2K-token single-layer cache, llama-3-8b (32 heads x 128), float16", LATENT_SOURCE,
                    32.0, mha_mib, "MiB", _verdict(32.0, mha_mib), gap or elements),
        ClaimResult("Latent (rank 32) 2K-token single-layer cache, float16", LATENT_SOURCE,
                    8.0, lr_mib, "MiB", _verdict(8.0, lr_mib), gap or elements),
    ]


# --- C: MQA / GQA attention parameters --------------------------------------------------------------------

def _column(rows: pd.DataFrame, column: str) -> pd.Series:
    if column not in rows.columns:
        return pd.Series(dtype=float)
    return pd.to_numeric(rows[column], errors="coerce").dropna()


def _claim_params(rows: pd.DataFrame) -> list[ClaimResult]:
    base = dict(model="tiny", num_heads=8, head_dim=32)
    hidden = config.PRESETS["tiny"].hidden_size
    mha, mha_note = _single(_column(_select(rows, variant="mha", **base), "params"))
    out: list[ClaimResult] = []
    for variant, extra, expected, shown in (("mqa", {}, 0.5625, "0.56"), ("gqa", {"num_kv_heads": 4}, 0.75, "0.75")):
        params, note = _single(_column(_select(rows, variant=variant, **base, **extra), "params"))
        ratio = params / mha if params is not None and mha else None
        label = "MQA" if variant == "mqa" else "GQA (8 heads, 4 groups)"
        gap = [f"no tiny {n} rows in the claims suite" for n, v in (("mha", mha), (variant, params)) if v is None]
        notes = gap or [f"hidden {hidden}, 8 heads x 32; exact {expected:g}, source rounds to {shown}"]
        notes += [n for n in (mha_note, note) if n]
        out.append(ClaimResult(f"{label} has {shown} of MHA's attention parameters", PARAMS_SOURCE,
                               expected, ratio, "x MHA params", _verdict(expected, ratio), "; ".join(notes)))
    return out


# --- D: GTA and GLA at the paper's 1.47B model --------------------------------------------------------------

def _per_token(rows: pd.DataFrame, column: str) -> tuple[float | None, str]:
    """Bytes per token (per layer) of `column` over the rows' batch * seq_len slots."""
    values = _column(rows, column)
    if values.empty:
        return None, ""
    kept = rows.loc[values.index]
    tokens = pd.to_numeric(kept["batch"], errors="coerce") * pd.to_numeric(kept["seq_len"], errors="coerce")
    return _single((values / tokens).dropna())


def _ratio_claim(text: str, expected: float, num: float | None, den: float | None, unit: str, gap: str,
                 note: str) -> ClaimResult:
    measured = num / den if num is not None and den else None
    return ClaimResult(text, GLA_PAPER, expected, measured, unit, _verdict(expected, measured),
                       gap if measured is None else note)


def _claim_gla(rows: pd.DataFrame) -> list[ClaimResult]:
    sh = config.PRESETS["gla-xl"]
    base = dict(model="gla-xl", mode="decode")
    out: list[ClaimResult] = []
    # GTA-4 vs GQA-4: (G*D + d_r) / (2*G*D), 0.5625 at D = 128, d_r = 64: "about half".
    per_token = {}
    for v in ("gta", "gqa"):
        sel = _select(rows, variant=v, num_kv_heads=4, **base)
        per_token[v] = _per_token(sel, _cache_bytes(sel)[1])[0]
    gta, gqa = per_token["gta"], per_token["gqa"]
    g, d, r = 4, sh.head_dim, sh.rope_head_dim
    out.append(_ratio_claim(
        "GTA-4 about halves GQA-4's KV cache", (g * d + r) / (2 * g * d), gta, gqa, "x GQA-4 cache bytes",
        "no gla-xl gta / gqa (G = 4) decode rows in the claims suite",
        f"cache tensors: GTA-4 {gta or 0:,.0f} B, GQA-4 {gqa or 0:,.0f} B per token per layer; exact "
        f"(G*D + d_r) / 2GD = {(g * d + r) / (2 * g * d):g}"))
    # Per GPU at TP 2: GLA-2 (h_c/N)*d_g + d_r = 320 elements (640 B bf16), MLA d_c + d_r = 576 (1152 B).
    for variant, expected in (("gla-absorbed", 640.0), ("mla-absorbed", 1152.0)):
        sel = _select(rows, variant=variant, tp=2, dtype="bfloat16", **base)
        measured = "kv_cache_bytes_per_gpu_measured"  # one rank's cache tensors, where the case ran sharded
        column = measured if measured in sel.columns and sel[measured].notna().any() else "kv_cache_bytes_per_gpu"
        per_gpu, note = _per_token(sel, column)
        source = f"{'measured on one rank' if column == measured else 'analytic'} ({column})"
        label = "GLA-2" if variant.startswith("gla") else "MLA"
        out.append(ClaimResult(f"{label} at TP 2 holds {expected:,.0f} B of KV cache per token per layer per GPU",
                               GLA_PAPER, expected, per_gpu, "B/token/layer/GPU", _verdict(expected, per_gpu),
                               f"no gla-xl bfloat16 {variant} decode rows swept with tp = 2 in the claims suite"
                               if per_gpu is None else "; ".join([source]
                                                                 + ([note] if note else []))))
    # Core FLOPs of one absorbed decode step: 2H(2d_g + d_r)T against MLA's 2H(2d_c + d_r)T.
    flops = {v: _single(_column(_select(rows, variant=v, scope="core", **base), "flops"))[0]
             for v in ("gla-absorbed", "mla-absorbed")}
    d_g, d_c = sh.kv_lora_rank // sh.num_latent_heads, sh.kv_lora_rank
    out.append(_ratio_claim(
        "GLA-2's absorbed decode does about half of MLA's core FLOPs at the same heads",
        (2 * d_g + r) / (2 * d_c + r), flops["gla-absorbed"], flops["mla-absorbed"], "x MLA core FLOPs",
        "no gla-xl gla-absorbed / mla-absorbed decode rows in scope core in the claims suite",
        f"flops of scope-core rows (analytic); exact (2d_g + d_r) / (2d_c + d_r) = "
        f"{(2 * d_g + r) / (2 * d_c + r):.4f}"))
    return out


# --- E-G: TPA's and DeepSeek Sparse Attention's caches ----------------------------------------------------

def _per_token_bytes(rows: pd.DataFrame) -> tuple[float | None, str]:
    """Measured cache bytes per token per layer (cache bytes / (batch * seq_len)), and a note."""
    if rows.empty:
        return None, ""
    column = _cache_bytes(rows)[1]
    value, note = _per_token(rows, column)
    return value, "; ".join([f"from {column}"] + ([note] if note else []))


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
    b = config.dtype_bytes(dtype)
    index_row = 128 + 4  # 128 FP8 values and one fp32 scale, in every dtype
    expected = 576 * b + index_row
    index_expected = index_row * DSA_CONTEXT / MB
    index_key = dsa - mla if dsa is not None and mla is not None else None
    index_mb = index_key * DSA_CONTEXT / MB if index_key is not None else None
    latent_mb = mla * DSA_CONTEXT / MB if mla is not None else None
    fp8 = "a FP8 latent (656 B, the kv_dtype axis) makes it 788 B"
    return [
        ClaimResult("DeepSeek-V3.2 caches a bf16 latent (576 values) + the FP8 indexer key (132 B) per token per "
                    "layer", DSA_SOURCE, float(expected), dsa, "B/token/layer", _verdict(float(expected), dsa),
                    (f"{dsa_note}; {fp8}" if dsa is not None else gap)),
        ClaimResult("DSA at 128K reads every indexer key: 128 FP8 values + one fp32 scale per token, ~17 MB per layer",
                    DSA_SOURCE, index_expected, index_mb, "MB/layer", _verdict(index_expected, index_mb),
                    (f"dsa minus mla-absorbed cache bytes per token x {DSA_CONTEXT}" if index_mb is not None
                     else gap)),
        ClaimResult("DSA at 128K reads 2048 latent rows, not the whole latent (~151 MB per layer in bf16, 86 MB in "
                    "FP8)", DSA_SOURCE, 576 * b * DSA_CONTEXT / MB, latent_mb, "MB/layer (whole latent)",
                    _verdict(576 * b * DSA_CONTEXT / MB, latent_mb),
                    (f"whole latent measured ({mla_note}); reading 2048 of {DSA_CONTEXT} rows is the analytic "
                     f"model's 64x, to confirm on a GPU" if latent_mb is not None else gap)),
    ]


def evaluate_claims(df: pd.DataFrame) -> list[ClaimResult]:
    """Every claim, measured from the rows with suite == 'claims' (others are ignored)."""
    rows = _claims_rows(df)
    return (_claim_table1(rows) + _claim_latent(rows) + _claim_params(rows) + _claim_gla(rows)
            + _claim_tpa(rows) + _claim_dsa(rows))


def has_claims(df: pd.DataFrame) -> bool:
    return not _claims_rows(df).empty
