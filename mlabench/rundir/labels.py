"""Short human labels for cases and chart series, naming only the key columns that vary.

"mla-absorbed:eager r=256" reads better than a 17-column key; a column enters
a label only when it takes more than one value among the rows being labelled,
so a one-model run never repeats the model name on every line.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from mlabench import schema

# How each key column is written inside a label; None = the bare value.
SHORT: dict[str, str | None] = {
    "suite": "suite",
    "model": None,
    "mode": None,
    "scope": "scope",
    "dtype": None,
    "device": None,
    "batch": "b",
    "seq_len": "s",
    "q_len": "q",
    "num_heads": "H",
    "num_kv_heads": "G",
    "head_dim": "D",
    "q_lora_rank": "rq",
    "kv_lora_rank": "rank",
    "rope_head_dim": "dr",
    "v_head_dim": "dv",
}


# Columns that name a workload as a whole; labels name them before any shape field.
OUTER: tuple[str, ...] = ("suite", "model", "dtype")


def part(column: str, value: object) -> str:
    text = schema.normalize_key_value(value)
    short = SHORT.get(column)
    return text if short is None else f"{short}={text}"


def varying_columns(df: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The columns (in key order) that take more than one value in `df`."""
    out = []
    for c in columns:
        if c in df.columns and df[c].nunique(dropna=False) > 1:
            out.append(c)
    return out


def _redundant(column: str, row: dict[str, object]) -> bool:
    """q_len is implied by the mode in the usual case (prefill: all tokens, decode: one)."""
    if column != "q_len":
        return False
    q = schema.normalize_key_value(row["q_len"])
    return (row["mode"] == "prefill" and q == schema.normalize_key_value(row["seq_len"])) or (
        row["mode"] == "decode" and q == "1"
    )


def case_labels(df: pd.DataFrame) -> pd.Series:
    """'variant:backend' plus the key columns that tell cases apart, for each row of `df`.

    Suite and model are named only when the rows span several; the other
    columns are named when they vary among the rows of the same suite, model
    and variant, so a shape that is fixed for a variant is not repeated.
    """
    labels = pd.Series("", index=df.index, dtype=str)
    if df.empty:
        return labels
    outer = varying_columns(df, ("suite", "model"))
    inner_candidates = [c for c in schema.KEY_COLUMNS if c not in ("suite", "model", "variant", "backend")]
    for _, sub in df.groupby(["suite", "model", "variant"], sort=False, dropna=False):
        inner = varying_columns(sub, inner_candidates)
        labels.loc[sub.index] = [
            " ".join([f"{row['variant']}:{row['backend']}"] + [part(c, row[c]) for c in outer]
                     + [part(c, row[c]) for c in inner if not _redundant(c, row)])
            for row in sub.to_dict("records")
        ]
    return labels


def series_labels(df: pd.DataFrame, exclude: Iterable[str], group: Iterable[str] = ("variant", "backend")) -> pd.Series:
    """A label per chart line: the `group` columns plus the key columns that split the group into lines.

    `exclude` are the columns already on an axis or a facet. Suite, model and
    dtype are named first when they vary inside the group; the remaining
    columns only when they vary among rows that share those, so lines of two
    models are not spelled out shape field by shape field, while
    'mla-absorbed:eager rank=128' still splits one variant's ranks.
    """
    group = list(group)
    skip = set(exclude) | set(group)
    outer_candidates = [c for c in OUTER if c not in skip]
    inner_candidates = [c for c in schema.KEY_COLUMNS if c not in skip and c not in OUTER]
    labels = pd.Series("", index=df.index, dtype=str)
    for _, sub in df.groupby(group, sort=False, dropna=False):
        outer = varying_columns(sub, outer_candidates)
        inner: list[str] = []
        for _, part_rows in sub.groupby(outer, sort=False, dropna=False) if outer else [((), sub)]:
            inner += [c for c in varying_columns(part_rows, inner_candidates) if c not in inner]
        labels.loc[sub.index] = [
            " ".join([":".join(str(row[g]) for g in group)] + [part(c, row[c]) for c in outer + inner])
            for row in sub.to_dict("records")
        ]
    return labels
