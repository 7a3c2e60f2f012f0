"""Joining run directories (one per shard, host or GPU) into one run directory."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from mlabench import schema
from mlabench.errors import NotComparableError, UsageError
from mlabench.results import RunWriter, read_rows


@dataclass(frozen=True)
class MergeSummary:
    rows: int
    samples: int


def _read_meta(run: Path) -> dict:
    path = run / schema.META_JSON
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg})") from None


def merge_runs(run_dirs: list[Path], out: Path) -> MergeSummary:
    if not run_dirs:
        raise UsageError("merge: give at least one run directory")
    metas, all_rows, all_samples = [], [], []
    owner: dict[str, Path] = {}
    for run in run_dirs:
        results = run / schema.RESULTS_CSV
        if not results.is_file():
            raise UsageError(f"merge: {results} not found")
        with results.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != list(schema.COLUMNS):
            raise UsageError(f"merge: {results} does not have mlabench's results columns")
        rows = read_rows(results)
        for row in rows:
            cid = row["case_id"]
            if cid in owner:
                raise UsageError(f"merge: case {cid} ({row['variant']}/{row['backend']} {row['mode']} "
                                 f"b={row['batch']} T={row['seq_len']}) is in both {owner[cid]} and {run}")
            owner[cid] = run
        all_rows.extend(rows)
        samples = run / schema.SAMPLES_CSV
        if samples.is_file():
            all_samples.extend(read_rows(samples))
        metas.append(_read_meta(run))
    devices = {m.get("device", {}).get("name") for m in metas if m}
    if len(devices) > 1:
        raise NotComparableError(f"merge: runs come from different devices: {', '.join(sorted(map(str, devices)))}")
    writer = RunWriter(out, resume=False)
    # Samples keep their round (files without the column are round 0).
    by_case: dict[str, dict[int, list[float]]] = {}
    for s in all_samples:
        rounds = by_case.setdefault(s["case_id"], {})
        rounds.setdefault(int(s.get("round") or 0), []).append(float(s["latency_ms"]))
    for row in all_rows:
        for r, draws in sorted(by_case.get(row["case_id"], {}).items()):
            writer.append_samples(row["case_id"], draws, r)
        writer.append({k: (v if v != "" else None) for k, v in row.items()}, [])
    meta = dict(metas[0]) if metas and metas[0] else {}
    meta["merged_from"] = [str(r) for r in run_dirs]
    meta["shards"] = [m.get("shard") for m in metas]
    meta["shard"] = None
    meta["cases"] = len(all_rows)
    writer.write_meta(meta)
    return MergeSummary(rows=len(all_rows), samples=len(all_samples))
