"""The run directory: the one module that writes it, reads it back typed, and labels its cases.

A run directory holds `results.csv` (one row per case; the columns are
`schema.ResultRow`), `samples.csv` (every timed sample), `meta.json` (the
environment fingerprint and the sweep's settings), `rounds.jsonl` (with rounds: each
finished round's row, the journal a resume reads) and `report.html`.

- `write`: the crash-safe writer a sweep appends to (`RunWriter`), and the cell format.
- `meta`: meta.json as a typed record (`RunMeta`), its one reader (`read_meta`); its one
  writer is `RunWriter.write_meta`.
- `read`: the validated reader (`load_run` -> `RunData`) that `report`, `compare`
  and `merge` all go through; malformed input is one `UsageError` line.
- `labels`: short case and series labels naming only the key columns that vary.

Key values are normalized by `schema.normalize_key_value`, so case ids agree
whether a row is in memory or read back from CSV.
"""

from __future__ import annotations

from mlabench.rundir.labels import case_labels, series_labels
from mlabench.rundir.meta import RunMeta, read_meta
from mlabench.rundir.read import (
    RunData,
    join_ids,
    key_frame,
    load_run,
    read_results,
    read_samples,
)
from mlabench.rundir.write import RunWriter, check_out_dir, format_cell, read_journal, read_rows

__all__ = [
    "RunData",
    "RunMeta",
    "RunWriter",
    "case_labels",
    "check_out_dir",
    "format_cell",
    "join_ids",
    "key_frame",
    "load_run",
    "read_journal",
    "read_meta",
    "read_results",
    "read_rows",
    "read_samples",
    "series_labels",
]
