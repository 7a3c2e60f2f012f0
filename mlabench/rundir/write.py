"""Writing a run directory crash-safely: rows appended and flushed as each case ends.

A case's raw samples are written before its row, so a row on disk always has its
samples; a kill loses at most the case in flight. On resume a torn last row (the
kill hit mid-write) is cut off where the CSV parser's last complete row ends, and
samples of unfinished cases dropped, so re-running them leaves no duplicates.

With several rounds, each round of a case is journalled as it ends (its samples, then
its row as one JSON line in rounds.jsonl); on resume a case's journalled rounds and
their samples are kept (`unfinished_rounds`) and only its missing rounds run again.

A writer holds an exclusive lock (flock on `.mlabench.lock`) on its directory for
its whole life, so two sweeps can never append to one run; the kernel releases
it when the process dies, however it dies.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlabench import schema
from mlabench.errors import UsageError
from mlabench.rundir.meta import RunMeta, read_meta


def format_cell(value: Any) -> str:
    """A value as results.csv writes it: '' for None and NaN, repr for floats (round-trips)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def complete_rows_end(text: str) -> int:
    """Where the last complete CSV row of `text` ends: len(text) when no row is torn.

    A row is complete when the CSV parser has closed it and its line ending follows. Cutting
    at the last newline instead would keep half of a torn row whose quoted field holds a
    newline (an error's traceback), leaving a quote that never closes. Raises csv.Error for
    a malformed row before the last one: that is damage, not a kill mid-write."""
    consumed = 0

    def lines() -> Iterable[str]:
        nonlocal consumed
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line

    end = 0
    try:
        for _ in csv.reader(lines(), strict=True):
            if text[consumed - 1] in "\r\n":
                end = consumed
    except csv.Error:
        if consumed < len(text):
            raise
    return end


def _cut_torn_tail(path: Path) -> None:
    """Drop a last row the process died while writing."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")  # a cut may split a character
    try:
        end = complete_rows_end(text)
    except csv.Error as exc:
        raise UsageError(f"--resume: {path} is corrupt before its last row ({exc}); start a new --out") from None
    if end < len(text):
        path.write_bytes(text[:end].encode("utf-8", "surrogateescape"))


def _sample_round(sample: list[str]) -> int:
    """A samples.csv row's round; rows written before rounds existed are round 0."""
    try:
        return int(sample[3]) if len(sample) > 3 and sample[3] else 0
    except ValueError:
        return -1  # matches no journalled round


LOCK_FILE = ".mlabench.lock"


def nearest_existing_dir(path: Path, option: str) -> Path:
    """The directory `path` is or would be created under; refuses a file in the way."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {path} exists and is not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option}: {path} is under {existing}, which is a file, not a directory")
    return existing


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, a path that cannot become a writable run directory."""
    existing = nearest_existing_dir(path, option)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: {existing} is not writable")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_journal(path: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """(case id, round, row) of each whole line of a rounds.jsonl; a torn or foreign line is left out."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
        try:
            entry = json.loads(line)
            row, r = entry["row"], int(entry["round"])
            if isinstance(row, dict) and set(row) <= set(schema.COLUMNS) and r >= 0:
                entries.append((str(row["case_id"]), r, row))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


# Called on resume, before anything in the directory changes, with the run's meta.json (None
# when absent) and whether results.csv holds rows; raises to refuse the resume.
ResumeCheck = Callable[[RunMeta | None, bool], None]


class RunWriter:
    """Appends rows and samples to a run directory; `finished` holds case ids already on disk.

    Holds the directory's lock until `close()` (or the end of a `with` block). `columns`: the
    results.csv header, this version's contract unless a run written by another version is
    being rewritten as it was (`rounds.assemble_rounds`)."""

    def __init__(self, run_dir: Path, resume: bool, check_resume: ResumeCheck | None = None,
                 columns: Sequence[str] = schema.COLUMNS):
        self.dir = run_dir
        self.results_path = run_dir / schema.RESULTS_CSV
        self.samples_path = run_dir / schema.SAMPLES_CSV
        self.rounds_path = run_dir / schema.ROUNDS_JSONL
        self.finished: set[str] = set()
        # Resume: the journalled rounds (row as written, samples) of each case without a row yet.
        self.unfinished_rounds: dict[str, list[tuple[dict[str, Any], list[float]]]] = {}
        self.previous_meta: RunMeta | None = None
        self.columns = tuple(columns)
        check_out_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock(run_dir)
        try:
            if self.results_path.exists() and self.results_path.stat().st_size > 0:
                if not resume:
                    raise UsageError(f"--out: {run_dir} already holds results "
                                     "(add --resume to continue it, or pick another --out)")
                self.previous_meta = read_meta(run_dir / schema.META_JSON)
                if check_resume is not None:
                    check_resume(self.previous_meta, len(self.results_path.read_bytes().splitlines()) > 1)
                self._load_existing()
            else:
                self._start(self.results_path, self.columns)
                self._start(self.samples_path, schema.SAMPLE_COLUMNS)
                self.rounds_path.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _acquire_lock(run_dir: Path) -> Any:
        handle = (run_dir / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(f"--out: {run_dir} is in use by another mlabench process (wait for it, "
                             "or pick another --out)") from None
        return handle

    def close(self) -> None:
        """Release the directory's lock; the writer appends nothing after this."""
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

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
        samples: list[list[str]] = []
        if self.samples_path.exists():
            _cut_torn_tail(self.samples_path)
            with self.samples_path.open(newline="") as f:
                samples = [r for r in csv.reader(f)][1:]
        journal = read_journal(self.rounds_path)
        kept_rounds = self._restore_rounds(journal, samples)
        kept = [r for r in samples if r and (r[0] in self.finished or (r[0], _sample_round(r)) in kept_rounds)]
        tmp = self.samples_path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(schema.SAMPLE_COLUMNS)
            w.writerows(kept)
        os.replace(tmp, self.samples_path)
        if journal:  # rounds measured again later must not appear twice
            tmp = self.rounds_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"round": r, "row": row}) + "\n" for cid, r, row in journal
                                   if cid in self.finished or (cid, r) in kept_rounds), encoding="utf-8")
            os.replace(tmp, self.rounds_path)

    def _restore_rounds(self, journal: list[tuple[str, int, dict[str, Any]]],
                        samples: list[list[str]]) -> set[tuple[str, int]]:
        """Fill `unfinished_rounds` from the journal: rounds 0..k-1 of each case without a row yet
        (the rounds after a gap are measured again). Returns the (case id, round) pairs kept."""
        rows: dict[str, dict[int, dict[str, Any]]] = {}
        for cid, r, row in journal:
            if cid not in self.finished:
                rows.setdefault(cid, {})[r] = row
        draws: dict[tuple[str, int], list[float]] = {}
        for s in samples:
            if len(s) >= 3 and s[0] in rows:
                try:
                    draws.setdefault((s[0], _sample_round(s)), []).append(float(s[2]))
                except ValueError:
                    continue
        for cid, by_round in rows.items():
            k = 0
            while k in by_round:
                k += 1
            if k:
                self.unfinished_rounds[cid] = [(by_round[i], draws.get((cid, i), [])) for i in range(k)]
        return {(cid, i) for cid, done in self.unfinished_rounds.items() for i in range(len(done))}

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

    def append_round(self, row: schema.ResultRow, samples_ms: list[float], round_index: int) -> None:
        """One finished round of a case whose results row comes later: its samples, then its row
        in the journal, so a journalled round always has its samples on disk."""
        self.append_samples(row.case_id, samples_ms, round_index)
        self.append_journal(row.as_dict(), round_index)

    def append_journal(self, row: Mapping[str, Any], round_index: int) -> None:
        """A round's row as one line of rounds.jsonl; its samples must be on disk already."""
        with self.rounds_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"round": round_index, "row": dict(row)}, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, row: schema.ResultRow | Mapping[str, Any], samples_ms: list[float], round_index: int = 0) -> None:
        """A case's samples, then its row. A mapping must hold only contract columns, unless the
        writer keeps another version's header (`columns`): then its cells are written as they are."""
        if not isinstance(row, schema.ResultRow) and self.columns == schema.COLUMNS:
            row = schema.ResultRow.from_mapping(row)
        values = row.as_dict() if isinstance(row, schema.ResultRow) else row
        cid = str(values["case_id"])
        self.append_samples(cid, samples_ms, round_index)
        self._append(self.results_path, [[format_cell(values.get(c)) for c in self.columns]])
        self.finished.add(cid)

    def write_meta(self, meta: RunMeta) -> None:
        """meta.json, replaced whole (written beside it, then renamed): the only writer of the file."""
        tmp = self.dir / (schema.META_JSON + ".tmp")
        tmp.write_text(meta.to_json())
        os.replace(tmp, self.dir / schema.META_JSON)
