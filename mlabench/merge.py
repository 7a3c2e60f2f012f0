"""Joining run directories (one per shard, host or GPU) into one run directory.

Every input is read through the same validated reader as `report` and `compare`
(`rundir.read`): a binary or malformed file, an unknown status, a non-numeric
cell or a torn last row is refused with one line. The set must also make one
run: the same suite and case list (`--allow-mixed` to join different ones), every
shard of a K/N split and every input finished (`--allow-partial` to join what is
there), one device (exit 3 otherwise).

A merged run is the run the shards would have written as one: rows, samples with their
round, and each case's journalled rounds (rounds.jsonl, with `--rounds`), so `compare`,
`report` and `sweep --resume` find the rounds where a whole run keeps them. Only cases
with a row are carried, samples and journal alike (an unfinished case's rounds have no
row to join).
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlabench import schema
from mlabench.errors import NotComparableError, UsageError
from mlabench.rundir import (
    RunMeta,
    RunWriter,
    check_out_dir,
    read_journal,
    read_meta,
    read_results,
    read_rows,
    read_samples,
)


@dataclass(frozen=True)
class MergeSummary:
    rows: int
    samples: int


@dataclass
class _Input:
    path: Path
    rows: list[dict[str, str]]  # the text of each row, copied as written
    samples: dict[str, dict[int, list[float]]]  # case id -> round -> samples
    meta: RunMeta | None
    journal: dict[str, dict[int, dict[str, Any]]]  # case id -> round -> that round's row (rounds.jsonl)

    @property
    def suites(self) -> set[str]:
        found = {r["suite"] for r in self.rows}
        return found or ({self.meta.suite} if self.meta is not None and self.meta.suite else set())


def _read_input(run: Path) -> _Input:
    if not run.is_dir():
        raise UsageError(f"merge: {run} is not a run directory" if run.exists() else f"merge: {run} not found")
    results = run / schema.RESULTS_CSV
    if not results.is_file():
        raise UsageError(f"merge: {results} not found")
    read_results(results, torn="refuse")  # validates every cell; the rows themselves are copied as text
    with results.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
    if header != list(schema.COLUMNS):
        raise UsageError(f"merge: {results} does not have this mlabench's results columns")
    samples_frame = read_samples(run / schema.SAMPLES_CSV)
    samples: dict[str, dict[int, list[float]]] = {}
    if samples_frame is not None:  # runs written before rounds existed read as round 0
        for cid, latency, r in zip(samples_frame["case_id"], samples_frame["latency_ms"], samples_frame["round"],
                                   strict=True):
            samples.setdefault(cid, {}).setdefault(int(r), []).append(float(latency))
    journal: dict[str, dict[int, dict[str, Any]]] = {}
    for cid, r, row in read_journal(run / schema.ROUNDS_JSONL):
        journal.setdefault(cid, {})[r] = row
    return _Input(run, read_rows(results), samples, read_meta(run / schema.META_JSON), journal)


def _check_one_run(inputs: list[_Input], allow_partial: bool, allow_mixed: bool) -> None:
    """Refuse sets that do not make one run unless asked; every message names the inputs at fault."""
    suites = {s: i.path for i in inputs for s in i.suites}
    if len(suites) > 1 and not allow_mixed:
        shown = ", ".join(f"{s} ({p})" for s, p in sorted(suites.items()))
        raise UsageError(f"merge: runs of different suites: {shown} (add --allow-mixed to merge them anyway)")
    grids = {(i.meta.run or {}).get("grid_sha1") for i in inputs if i.meta is not None} - {None}
    if len(grids) > 1 and not allow_mixed:
        raise UsageError("merge: runs of one suite with different case lists (other axes, --set or suite file); "
                         "add --allow-mixed to merge them anyway")
    shards = [(i.path, i.meta.shard if i.meta is not None else None) for i in inputs]
    given = [(p, s) for p, s in shards if s]
    if given:
        splits = {str(s).split("/")[1] for _, s in given}
        if len(splits) > 1 or len(given) != len(inputs):
            shown = ", ".join(f"{s or 'whole'} ({p})" for p, s in shards)
            raise UsageError(f"merge: inputs are not slices of one split: {shown}")
        n = int(splits.pop())
        have = [int(str(s).split("/")[0]) for _, s in given]
        twice = sorted({k for k in have if have.count(k) > 1})
        if twice:
            raise UsageError(f"merge: shard {twice[0]}/{n} is given twice")
        missing = sorted(set(range(1, n + 1)) - set(have))
        if missing and not allow_partial:
            raise UsageError(f"merge: incomplete shard set: missing {', '.join(f'{k}/{n}' for k in missing)} "
                             "(add --allow-partial to merge what is there)")
    for i in inputs:
        expected = i.meta.cases if i.meta is not None else None
        unfinished = i.meta is not None and not i.meta.finished
        short = isinstance(expected, int) and len(i.rows) < expected
        if (unfinished or short) and not allow_partial:
            count = f" ({len(i.rows)} of {expected} cases)" if isinstance(expected, int) else ""
            raise UsageError(f"merge: {i.path} is unfinished{count}; finish it with `mlabench sweep ... --resume` "
                             "(or add --allow-partial)")


def merge_runs(run_dirs: list[Path], out: Path, allow_partial: bool = False,
               allow_mixed: bool = False) -> MergeSummary:
    if not run_dirs:
        raise UsageError("merge: give at least one run directory")
    check_out_dir(out)
    if any(out.resolve() == r.resolve() for r in run_dirs):
        raise UsageError(f"--out: {out} is one of the inputs")
    inputs = [_read_input(run) for run in run_dirs]
    owner: dict[str, Path] = {}
    for i in inputs:
        for row in i.rows:
            cid = row["case_id"]
            if cid in owner:
                raise UsageError(f"merge: case {cid} ({row['variant']}/{row['backend']} {row['mode']} "
                                 f"b={row['batch']} T={row['seq_len']}) is in both {owner[cid]} and {i.path}")
            owner[cid] = i.path
    _check_one_run(inputs, allow_partial, allow_mixed)
    metas = [i.meta for i in inputs if i.meta is not None]
    devices = {m.device_name for m in metas}
    if len(devices) > 1:
        raise NotComparableError(f"merge: runs come from different devices: {', '.join(sorted(map(str, devices)))}")
    total_rows = sum(len(i.rows) for i in inputs)
    total_samples = 0
    with RunWriter(out, resume=False) as writer:
        for i in inputs:
            for row in i.rows:
                # Samples keep their round, then each journalled round its line (its samples are on
                # disk); the samples and rounds of a case without a row are dropped.
                for r, draws in sorted(i.samples.get(row["case_id"], {}).items()):
                    writer.append_samples(row["case_id"], draws, r)
                    total_samples += len(draws)
                for r, journalled in sorted(i.journal.get(row["case_id"], {}).items()):
                    writer.append_journal(journalled, r)
                writer.append({k: (v if v != "" else None) for k, v in row.items()}, [])
        first = metas[0] if metas else RunMeta()
        meta = dataclasses.replace(first, merged_from=[str(r) for r in run_dirs], shards=[m.shard for m in metas],
                                   shard=None, cases=total_rows, partial=allow_partial,
                                   mixed=allow_mixed and len({s for i in inputs for s in i.suites}) > 1)
        kinds = {name: fp for m in metas for name, fp in (m.devices or {}).items()}
        if kinds:  # every device kind any shard's cases ran on, so compare sees a mixed merge
            meta.devices = kinds
        if meta.run is not None:
            # The merged rows are the whole grid only when every shard was there in full.
            whole = not allow_partial and not allow_mixed and total_rows == meta.run.get("grid_cases")
            meta.run = {**meta.run, "shard": None, "cases": total_rows,
                        "cases_sha1": meta.run.get("grid_sha1") if whole else None}
        writer.write_meta(meta)
    return MergeSummary(rows=total_rows, samples=total_samples)
