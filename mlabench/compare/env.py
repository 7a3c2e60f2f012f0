"""Are two runs comparable? Device and torch from meta.json, dtype/device/shape columns from the keys.

A timing comparison across GPUs, torch versions or dtypes says nothing about
the code under review, so these raise `NotComparableError` (exit 3) unless the
user passes --allow-env-change, in which case they become notes. The message
names the field and both values.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mlabench import schema
from mlabench.errors import NotComparableError
from mlabench.rundir import RunData, join_ids, key_frame

# Fields that make timings incomparable, and fields only worth a note.
BLOCKING_META: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("device name", ("device", "name")),
    ("torch version", ("torch",)),
)
NOTED_META: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("driver", ("device", "driver")),
    ("CUDA", ("device", "cuda")),
    ("triton", ("triton",)),
    ("CPU", ("cpu", "model")),
    ("mlabench version", ("mlabench_version",)),
)
# Key columns whose change makes the same case a different experiment.
DRIFT_COLUMNS: tuple[str, ...] = (
    "dtype", "kv_dtype", "device", "model", "num_heads", "num_kv_heads", "head_dim",
    "q_lora_rank", "kv_lora_rank", "num_latent_heads", "rope_head_dim", "v_head_dim",
)
HINT = "(pass --allow-env-change to compare anyway)"


def _get(meta: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = meta
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def device_kinds(run: RunData) -> list[str]:
    """The device kinds a run's cases ran on: meta.json's `devices` and the rows' `device_name`
    (rows written before that column have none)."""
    kinds = {str(k) for k in ((run.meta or {}).get("devices") or {})}
    if "device_name" in run.results.columns:
        kinds |= {str(v) for v in run.results["device_name"].dropna() if str(v).strip()}
    return sorted(kinds)


def check_environment(base: RunData, cand: RunData, allow: bool) -> list[str]:
    """Raise on a different device or torch; return notes for everything else that changed."""
    notes: list[str] = []
    for run, side in ((base, "baseline"), (cand, "candidate")):
        if not run.meta:
            notes.append(f"{side} has no {schema.META_JSON}: device and torch not checked")
    for run, side in ((base, "baseline"), (cand, "candidate")):
        kinds = device_kinds(run)
        if len(kinds) > 1:  # a cluster sweep over mixed GPUs: its timings are not of one device
            text = f"{side} ran on mixed device kinds ({', '.join(kinds)}); compare one kind at a time"
            if not allow:
                raise NotComparableError(f"{text} {HINT}")
            notes.append(text)
    if not (base.meta and cand.meta):
        return notes
    for name, path in BLOCKING_META + NOTED_META:
        bv, cv = _get(base.meta, path), _get(cand.meta, path)
        if bv is None or cv is None or str(bv) == str(cv):
            continue
        text = f"{name} differs: baseline {bv!r}, candidate {cv!r}"
        if (name, path) in BLOCKING_META and not allow:
            raise NotComparableError(f"{text} {HINT}")
        notes.append(text)
    return notes


def timing_modes(run: RunData) -> set[str]:
    """The timing modes (schema.timing_mode of `timer`) of a run's timed rows."""
    timers = run.results["timer"] if "timer" in run.results.columns else pd.Series([], dtype=str)
    return {schema.timing_mode(t) for t in timers if str(t).strip()}


def check_timing(base: RunData, cand: RunData, allow: bool) -> list[str]:
    """Raise when the runs were timed in different modes (cold events, CUDA-graph replay, CPU
    blocks): a cold and a hot latency of the same code differ by design, not by a change."""
    bm, cm = timing_modes(base), timing_modes(cand)
    if not bm or not cm or bm == cm:
        return []
    text = f"timing mode differs: baseline {'/'.join(sorted(bm))}, candidate {'/'.join(sorted(cm))}"
    if not allow:
        raise NotComparableError(f"{text} {HINT}")
    return [text]


def profiled_cases(run: RunData) -> set[str]:
    """Join ids of the run's rows marked `profiled` (runs written before the column have none)."""
    if "profiled" not in run.results.columns:
        return set()
    flags = pd.to_numeric(run.results["profiled"], errors="coerce").fillna(0)
    return set(join_ids(key_frame(run.results[flags == 1])))


def check_profiled(base: RunData, cand: RunData, allow: bool) -> list[str]:
    """Raise when a case was profiled on one side only: NVTX ranges wrap a profiled case's timed
    calls, so its latency is not the unprofiled code's, however small the difference."""
    bp, cp = profiled_cases(base), profiled_cases(cand)
    if bp == cp:
        return []
    text = (f"profiling differs: {len(bp - cp)} case(s) profiled in the baseline only, {len(cp - bp)} in the "
            "candidate only (a profiled run is not gated against an unprofiled one)")
    if not allow:
        raise NotComparableError(f"{text} {HINT}")
    return [text]


def _values(series: pd.Series) -> str:
    return "/".join(sorted(set(series))) or "''"


def key_drift(bk: pd.DataFrame, ck: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Drift columns that separate otherwise-identical cases: {column: (baseline values, candidate values)}.

    Cases present on one side only are paired by every key column except the
    drift columns; where such pairs exist, the drift columns whose values
    differ between the two sides are what changed.
    """
    bid, cid = join_ids(bk), join_ids(ck)
    b_only, c_only = bk[~bid.isin(set(cid))], ck[~cid.isin(set(bid))]
    if b_only.empty or c_only.empty:
        return {}
    br, cr = join_ids(b_only, DRIFT_COLUMNS), join_ids(c_only, DRIFT_COLUMNS)
    common = set(br) & set(cr)
    if not common:
        return {}
    bp, cp = b_only[br.isin(common)], c_only[cr.isin(common)]
    drift = {col: (_values(bp[col]), _values(cp[col])) for col in DRIFT_COLUMNS if set(bp[col]) != set(cp[col])}
    return drift or {"shape columns": ("(mixed)", "(mixed)")}


def check_keys(bk: pd.DataFrame, ck: pd.DataFrame, allow: bool) -> list[str]:
    """Raise when cases differ only by dtype/device/shape, or when no case matches at all.

    `bk` and `ck` are the two runs' `key_frame`s.
    """
    drift = key_drift(bk, ck)
    if drift:
        text = "; ".join(f"{col} differs (baseline {b}, candidate {c})" for col, (b, c) in drift.items())
        if not allow:
            raise NotComparableError(f"{text} {HINT}")
        return [text]
    full = list(schema.KEY_COLUMNS)
    if set(join_ids(bk)) & set(join_ids(ck)):
        return []
    differing = [f"{col} (baseline {_values(bk[col])}, candidate {_values(ck[col])})"
                 for col in full if set(bk[col]) != set(ck[col])]
    text = "no case in common; differing columns: " + (", ".join(differing[:4]) or "none")
    if not allow:
        raise NotComparableError(f"{text} {HINT}")
    return [text]


def drift_join_columns(bk: pd.DataFrame, ck: pd.DataFrame) -> tuple[str, ...]:
    """With --allow-env-change: the drift columns to ignore so changed cases still pair up.

    Only used when ignoring them keeps every case unique on both sides;
    otherwise the cases are joined on the full key.
    """
    drift = [c for c in key_drift(bk, ck) if c in DRIFT_COLUMNS]
    if not drift:
        return ()
    for keys in (bk, ck):
        if join_ids(keys, frozenset(drift)).duplicated().any():
            return ()
    return tuple(drift)
