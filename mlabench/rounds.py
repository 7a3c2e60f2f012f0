"""Rounds: running a case list several times, and folding a case's rounds into one results row.

A round is one pass over the whole case list. Samples inside one pass cannot see
what changes between passes (another tenant on the host, clocks, placement, the
process's own memory layout), so the regression gate replicates over rounds, not
samples. Each round visits the cases in its own seeded order, so a slow spell of
the machine lands on different cases in different rounds instead of always on
the same neighbours.

`combine_rounds` turns a case's per-round rows into the one row results.csv
keeps: latency columns from all rounds' samples pooled, accuracy and compile time
from the first round (later rounds skip the float64 reference; the first compile
is the one that costs), and a failure in any round fails the case. Rows may hold
Python values (a sweep in this process) or CSV text (`assemble_rounds`, which
builds one run directory out of per-round run directories for `mlabench ab`).
Imports no torch.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mlabench import schema
from mlabench.rundir import RunMeta, RunWriter, read_meta

T = TypeVar("T")
# Columns inversely proportional to latency: rescaled when the pooled median replaces one round's.
RATE_COLUMNS: tuple[str, ...] = ("tokens_per_s", "tflops", "gbps", "roofline_pct")


def round_order(items: Sequence[T], seed: int, round_index: int) -> list[T]:
    """`items` in the seeded order of one round (the same on every machine for a seed and round)."""
    rng = np.random.default_rng([int(seed), int(round_index)])
    return [items[i] for i in rng.permutation(len(items))]


def latency_summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, p10, p90, IQR and count of pooled samples (the runner's definitions)."""
    ordered = sorted(samples)
    median = statistics.median(ordered)
    if len(ordered) >= 2:
        q = statistics.quantiles(ordered, n=20, method="inclusive")  # 5% steps: q[1] = p10, q[17] = p90
        quart = statistics.quantiles(ordered, n=4, method="inclusive")
        p10, p90, iqr = q[1], q[17], quart[2] - quart[0]
    else:
        p10 = p90 = median
        iqr = 0.0
    return {"latency_ms": median, "latency_ms_p10": p10, "latency_ms_p90": p90, "latency_ms_iqr": iqr,
            "n_samples": len(ordered)}


def combine_rounds(rows: Sequence[Mapping[str, Any]], samples: Sequence[Sequence[float]]) -> dict[str, Any]:
    """One case's results row from its per-round rows (round 0 first) and per-round samples."""
    first = rows[0]
    out = dict(first)
    failed = next(((i, r) for i, r in enumerate(rows) if str(r.get("status")) in schema.FAILED_STATUSES), None)
    if failed is not None and str(first.get("status")) not in schema.FAILED_STATUSES:
        i, r = failed
        out.update(status=r["status"], error=f"round {i}: {r.get('error') or r['status']}")
    walls = [w for w in (schema.finite_number(r.get("wall_s")) for r in rows) if w is not None]
    if walls:
        out["wall_s"] = round(sum(walls), 3)
    pooled = [float(x) for draws in samples for x in draws]
    if not pooled:
        return out
    timed = next((r for r in rows if schema.finite_number(r.get("latency_ms"))), first)
    summary = latency_summary(pooled)
    old = schema.finite_number(timed.get("latency_ms"))
    for col in RATE_COLUMNS:
        value = schema.finite_number(timed.get(col))
        if value is not None and old:
            out[col] = value * old / summary["latency_ms"]
    out.update(summary)
    return out


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def assemble_rounds(round_dirs: Sequence[Path], out: Path, meta_extra: Mapping[str, Any] | None = None) -> int:
    """Write one run directory to `out` from run directories that each hold one round; returns its rows.

    Round k is `round_dirs[k]`. results.csv keeps the columns the first round was
    written with (a baseline built from older code keeps its own contract);
    samples.csv gains the `round` column; meta.json is the first round's plus
    `rounds` and `meta_extra` (RunMeta fields). Written through `RunWriter`, like any run.
    """
    header: list[str] = []
    per_case: dict[str, list[tuple[int, dict[str, str]]]] = {}
    draws: dict[str, dict[int, list[float]]] = {}
    for k, run in enumerate(round_dirs):
        columns, rows = _read_csv(run / schema.RESULTS_CSV)
        header = header or columns
        for row in rows:
            per_case.setdefault(row["case_id"], []).append((k, row))
        for s in _read_csv(run / schema.SAMPLES_CSV)[1]:
            draws.setdefault(s["case_id"], {}).setdefault(k, []).append(float(s["latency_ms"]))
    first = read_meta(round_dirs[0] / schema.META_JSON) if round_dirs else None
    meta = dataclasses.replace(first or RunMeta(), rounds=len(round_dirs), **(meta_extra or {}))
    with RunWriter(out, resume=False, columns=header or schema.COLUMNS) as writer:
        for cid, entries in per_case.items():
            entries.sort(key=lambda e: e[0])
            rounds = draws.pop(cid, {})
            for k, values in sorted(rounds.items()):
                writer.append_samples(cid, values, k)
            writer.append(combine_rounds([r for _, r in entries], [rounds.get(k, []) for k, _ in entries]), [])
        for cid, rounds in draws.items():  # samples of a case that has no row: kept as they were
            for k, values in sorted(rounds.items()):
                writer.append_samples(cid, values, k)
        writer.write_meta(meta)
    return len(per_case)
