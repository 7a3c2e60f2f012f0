"""Read a run directory (results.csv, samples.csv, meta.json) into typed pandas frames.

Shared by `report`, `compare` and `merge`. Every malformed input raises
`UsageError` with one line that names the file and the column or row at fault,
so the CLI exits 2 instead of printing a pandas traceback. Imports no torch.

A torn last row (one the CSV parser cannot close: the sweep was killed while writing it) is the
case that was in flight, which a killed sweep loses by design. `report` and
`compare` drop it with a warning on stderr, so a killed sweep can still be read
(compare then shows that case as missing); `merge`, which writes a new run,
refuses it: finish the run with `--resume` first.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mlabench import schema
from mlabench.errors import UsageError
from mlabench.rundir.meta import read_meta
from mlabench.rundir.write import complete_rows_end
from mlabench.schema import normalize_key_value

# Columns a results.csv must have. The rest of the contract is optional so
# that baselines written before a column was added still load (filled empty).
# Key columns added after runs were already on disk, with the value those runs implicitly had.
KEY_DEFAULTS: dict[str, str] = schema.KEY_DEFAULTS
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in schema.KEY_COLUMNS
                                          if c not in KEY_DEFAULTS and c not in schema.KEY_DEFAULT_FROM) + \
    schema.OUTCOME_COLUMNS + ("latency_ms",)
# Columns read as text: the string-typed ones, and fits_l2 (True/False as written).
STRING_COLUMNS: frozenset[str] = frozenset(
    f.name for f in dataclasses.fields(schema.ResultRow) if f.type in ("str", "str | None", "bool | None"))
SAMPLE_REQUIRED: tuple[str, ...] = ("case_id", "sample", "latency_ms")  # `round` is optional
NUMERIC_KEY_COLUMNS: tuple[str, ...] = tuple(c for c in schema.KEY_COLUMNS if c not in STRING_COLUMNS)

# What to do with a torn last row: drop it with a warning, drop it silently, or refuse the file.
Torn = Literal["warn", "quiet", "refuse"]


@dataclass(frozen=True)
class RunData:
    """One run directory, loaded. `results` has every contract column, numbers as floats."""

    path: Path  # the run directory
    results_path: Path
    results: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)  # meta.json as on disk ({} when absent)
    samples: pd.DataFrame | None = None  # case_id, sample, latency_ms, round; None when absent

    @property
    def label(self) -> str:
        return str(self.path)


def resolve(path: str | Path) -> tuple[Path, Path]:
    """(run dir, results.csv) for a run directory or a results.csv path."""
    p = Path(path)
    if p.is_dir():
        return p, p / schema.RESULTS_CSV
    if p.suffix == ".csv" and p.exists():
        return p.parent, p
    if not p.exists():
        raise UsageError(f"{p}: no such run directory or results.csv")
    raise UsageError(f"{p}: expected a run directory or a results.csv file")


def key_dict(row: pd.Series | dict[str, Any], columns: tuple[str, ...] = schema.KEY_COLUMNS) -> dict[str, str]:
    return {c: normalize_key_value(row[c]) for c in columns}


def key_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The key columns as normalized text, one row per case."""
    return pd.DataFrame({c: df[c].map(normalize_key_value).astype(str) for c in schema.KEY_COLUMNS}, index=df.index)


def join_ids(keys: pd.DataFrame, ignore: tuple[str, ...] | frozenset[str] = ()) -> pd.Series:
    """schema.case_id of each row of a `key_frame`, with the `ignore` columns blanked."""
    ids = [
        schema.case_id({c: ("" if c in ignore else r[c]) for c in schema.KEY_COLUMNS})
        for r in keys.to_dict("records")
    ]
    return pd.Series(ids, index=keys.index, dtype=str)


def _read_csv_text(path: Path, what: str, torn: Torn = "warn", required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every cell as text (empty stays ''), or UsageError naming the file.

    `required` columns are checked on the header before the rows, so a file that is not ours
    is named as such; then every row must have as many fields as the header."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if not data.strip():
        return pd.DataFrame()
    if b"\x00" in data:
        raise UsageError(f"{path}: not a CSV file (binary content)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 CSV file") from None
    try:
        end = complete_rows_end(text)
    except csv.Error as exc:
        raise UsageError(f"{path}: corrupt CSV ({exc})") from None
    if end < len(text):
        if torn == "refuse":
            raise UsageError(f"{path}: the last row is torn (the sweep was killed while writing it); "
                             "finish the run with `mlabench sweep ... --resume` first")
        if torn == "warn":
            print(f"mlabench: warning: {path}: dropped a torn last row (the sweep was killed while writing it; "
                  "`--resume` measures that case again)", file=sys.stderr)
        text = text[:end]
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r]
    except csv.Error as exc:
        raise UsageError(f"{path}: corrupt CSV ({exc})") from None
    if not rows:
        return pd.DataFrame()
    header = [c.strip() for c in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        raise UsageError(f"{path}: missing required column(s): {shown}")
    if len(set(header)) != len(header):
        raise UsageError(f"{path}: corrupt CSV (a column name repeats in the header)")
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise UsageError(f"{path}: corrupt CSV (row {i + 2} has {len(row)} fields, the header {len(header)})")
    return pd.DataFrame(rows[1:], columns=header, dtype=str)


def _to_numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Empty cells -> NaN; anything else that is not a number -> UsageError naming the row."""
    text = frame[column].astype(str).str.strip()
    numbers = pd.to_numeric(text.where(text != "", None), errors="coerce")
    bad = numbers.isna() & (text != "")
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise UsageError(f"{path}: column {column!r} row {i + 2} is not a number: {text.iloc[i][:40]!r}")
    return numbers.astype("float64")


def read_results(path: Path, torn: Torn = "warn") -> pd.DataFrame:
    """results.csv -> frame with all `schema.COLUMNS` (+ any extra), typed; validates the contract."""
    raw = _read_csv_text(path, schema.RESULTS_CSV, torn, REQUIRED_COLUMNS)
    if raw.empty and len(raw.columns) == 0:
        # A sweep killed before its header was flushed: a run with no rows.
        raw = pd.DataFrame({c: pd.Series([], dtype=str) for c in schema.COLUMNS})
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        raise UsageError(f"{path}: missing required column(s): {shown}")
    for c in schema.COLUMNS:
        if c not in raw.columns:
            raw[c] = raw[schema.KEY_DEFAULT_FROM[c]] if c in schema.KEY_DEFAULT_FROM else KEY_DEFAULTS.get(c, "")
    for c, default_from in schema.KEY_DEFAULT_FROM.items():  # an empty cell: the value before the column
        raw.loc[raw[c].astype(str).str.strip() == "", c] = raw[default_from]
    statuses = raw["status"].str.strip()
    unknown = ~statuses.isin(schema.STATUSES)
    if unknown.any():
        i = int(unknown.to_numpy().nonzero()[0][0])
        raise UsageError(
            f"{path}: column 'status' row {i + 2} has unknown status {statuses.iloc[i][:40]!r} "
            f"(expected one of {', '.join(schema.STATUSES)})"
        )
    out = pd.DataFrame(index=raw.index)
    for c in raw.columns:
        if c in STRING_COLUMNS:
            out[c] = raw[c].astype(str).str.strip()
        elif c in schema.COLUMNS:
            out[c] = _to_numeric(raw, c, path)
        else:
            out[c] = raw[c]  # unknown future column: kept as text
    for c in NUMERIC_KEY_COLUMNS:
        # Shapes are integers; keep them so (batch=1, not 1.0) when no cell is empty.
        col = out[c]
        if col.notna().all() and (col == col.round()).all():
            out[c] = col.astype("int64")
    # Ids from the stored column where present, else recomputed from the key.
    empty = out["case_id"] == ""
    if empty.any():
        out.loc[empty, "case_id"] = join_ids(key_frame(out[empty])).to_numpy()
    return out.reset_index(drop=True)


def read_samples(path: Path) -> pd.DataFrame | None:
    """samples.csv -> frame (case_id, sample, latency_ms, round), or None if the run has none."""
    if not path.exists():
        return None
    # A torn samples line belongs to the case in flight, which has no row: dropped without a word.
    raw = _read_csv_text(path, schema.SAMPLES_CSV, "quiet", SAMPLE_REQUIRED)
    if raw.empty and len(raw.columns) == 0:
        return pd.DataFrame({"case_id": pd.Series([], dtype=str), "sample": [], "latency_ms": [], "round": []})
    missing = [c for c in SAMPLE_REQUIRED if c not in raw.columns]
    if missing:
        raise UsageError(f"{path}: missing required column(s): {', '.join(missing)}")
    # Runs written before rounds existed (or rows of a resumed old run) are round 0.
    rounds = _to_numeric(raw, "round", path).fillna(0.0) if "round" in raw.columns else 0.0
    return pd.DataFrame(
        {
            "case_id": raw["case_id"].astype(str).str.strip(),
            "sample": _to_numeric(raw, "sample", path),
            "latency_ms": _to_numeric(raw, "latency_ms", path),
            "round": rounds,
        }
    ).astype({"round": "int64"})


def load_run(path: str | Path, *, samples: bool = True, torn: Torn = "warn") -> RunData:
    """Load a run directory (or a results.csv and its neighbours)."""
    run_dir, results_path = resolve(path)
    if not results_path.exists():
        raise UsageError(f"{results_path}: {schema.RESULTS_CSV} not found")
    results = read_results(results_path, torn)
    recorded = read_meta(run_dir / schema.META_JSON)
    meta = recorded.as_dict() if recorded is not None else {}
    sample_frame = read_samples(run_dir / schema.SAMPLES_CSV) if samples else None
    return RunData(path=run_dir, results_path=results_path, results=results, meta=meta, samples=sample_frame)
