"""Writing a run directory crash-safely: rows appended and flushed as each case ends.

A case's raw samples are written before its row, so a row on disk always has its
samples; a kill loses at most the case in flight. On resume a torn last line
(the kill hit mid-write) is cut off and samples of unfinished cases dropped, so
re-running them leaves no duplicates.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlabench import schema
from mlabench.errors import UsageError


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (the process died while writing it)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class RunWriter:
    """Appends rows and samples to a run directory; `finished` holds case ids already on disk."""

    def __init__(self, run_dir: Path, resume: bool):
        self.dir = run_dir
        self.results_path = run_dir / schema.RESULTS_CSV
        self.samples_path = run_dir / schema.SAMPLES_CSV
        self.finished: set[str] = set()
        if self.results_path.exists() and self.results_path.stat().st_size > 0:
            if not resume:
                raise UsageError(f"--out: {run_dir} already holds results "
                                 "(add --resume to continue it, or pick another --out)")
            self._load_existing()
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._start(self.results_path, schema.COLUMNS)
            self._start(self.samples_path, schema.SAMPLE_COLUMNS)

    @staticmethod
    def _start(path: Path, columns: Iterable[str]) -> None:
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(columns)

    def _load_existing(self) -> None:
        _cut_torn_tail(self.results_path)
        with self.results_path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "case_id" not in reader.fieldnames:
                raise UsageError(f"--resume: {self.results_path} is not an mlabench results file (no case_id column)")
            if list(reader.fieldnames) != list(schema.COLUMNS):
                raise UsageError(f"--resume: {self.results_path} was written by another mlabench version "
                                 "(columns differ)")
            self.finished = {row["case_id"] for row in reader}
        if self.samples_path.exists():
            _cut_torn_tail(self.samples_path)
            with self.samples_path.open(newline="") as f:
                kept = [r for r in csv.reader(f)][1:]
            kept = [r for r in kept if r and r[0] in self.finished]
            tmp = self.samples_path.with_suffix(".tmp")
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(schema.SAMPLE_COLUMNS)
                w.writerows(kept)
            os.replace(tmp, self.samples_path)
        else:
            self._start(self.samples_path, schema.SAMPLE_COLUMNS)

    @staticmethod
    def _append(path: Path, rows: Iterable[Iterable[str]]) -> None:
        with path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def append_samples(self, case_id: str, samples_ms: list[float], round_index: int = 0) -> None:
        """One round's raw samples of a case (numbered from 0 within the round)."""
        if samples_ms:
            self._append(self.samples_path, ([case_id, str(i), repr(float(s)), str(round_index)]
                                             for i, s in enumerate(samples_ms)))

    def append(self, row: Mapping[str, Any], samples_ms: list[float], round_index: int = 0) -> None:
        unknown = set(row) - set(schema.COLUMNS)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        cid = row["case_id"]
        self.append_samples(cid, samples_ms, round_index)
        self._append(self.results_path, [[_format(row.get(c)) for c in schema.COLUMNS]])
        self.finished.add(cid)

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        tmp = self.dir / (schema.META_JSON + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.dir / schema.META_JSON)
