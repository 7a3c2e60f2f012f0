"""What to profile, from the command line: the trace directory, which cases, snapshot and NVTX.

Checked before any case runs (exit 2 on bad input): the directory must be creatable and
writable, and a `--profile-match` must name at least one planned case. This module imports no
torch, so the checks are cheap and create nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlabench import schema
from mlabench.case import Case
from mlabench.errors import UsageError
from mlabench.rundir.write import nearest_existing_dir


@dataclass(frozen=True)
class ProfileRequest:
    out_dir: Path | None  # where traces go; None: no trace (NVTX ranges only)
    # Each filter is (field, value) pairs that must all hold; a case is profiled when any filter
    # holds, or always when there is none.
    match: tuple[tuple[tuple[str, str], ...], ...] = ()
    memory_snapshot: bool = False
    nvtx: bool = False

    def traces(self, case: Case) -> bool:
        """Whether this case gets a trace (and breakdown, and snapshot) after its samples."""
        return self.out_dir is not None and self.selects(case)

    def selects(self, case: Case) -> bool:
        if not self.match:
            return True
        key = case.key
        return any(all(schema.normalize_key_value(key.get(f)) == v for f, v in flt) for flt in self.match)


def parse_match(texts: Iterable[str]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """['variant=mla-absorbed,backend=triton'] -> ((('variant', 'mla-absorbed'), ('backend', 'triton')),).

    Fields are the case key's columns; values are compared in the key's text form (`128` and
    `128.0` are one value)."""
    filters = []
    for text in texts:
        pairs = []
        for item in (t.strip() for t in text.split(",")):
            field, sep, value = (p.strip() for p in item.partition("="))
            if not sep or not field or not value:
                raise UsageError(f"--profile-match: expected FIELD=VALUE[,FIELD=VALUE...], got {text!r}")
            if field not in schema.KEY_COLUMNS:
                raise UsageError(f"--profile-match: unknown field {field!r} (a case key column, e.g. variant, "
                                 "backend, mode, scope, batch, seq_len)")
            pairs.append((field, schema.normalize_key_value(value)))
        filters.append(tuple(pairs))
    return tuple(filters)


def build_request(profile: Path | None, match: Sequence[str] | None = None, memory_snapshot: bool = False,
                  nvtx: bool = False) -> ProfileRequest | None:
    """The request the flags make, or None when no profiling flag is given."""
    if profile is None:
        if match:
            raise UsageError("--profile-match selects cases for --profile DIR; give --profile DIR too")
        if memory_snapshot:
            raise UsageError("--memory-snapshot is written into the --profile DIR; give --profile DIR too")
        return ProfileRequest(None, nvtx=True) if nvtx else None
    return ProfileRequest(profile, parse_match(match or ()), memory_snapshot, nvtx)


def check_request(request: ProfileRequest | None, cases: Sequence[Case]) -> None:
    """Refuse, before any case runs, a directory that cannot take traces or a match naming no case."""
    if request is None:
        return
    if request.match and not any(request.selects(c) for c in cases):
        shown = " or ".join(",".join(f"{f}={v}" for f, v in flt) for flt in request.match)
        raise UsageError(f"--profile-match {shown}: names none of the {len(cases)} planned cases")
    if request.out_dir is not None:
        check_writable_dir(request.out_dir, "--profile")


def check_writable_dir(path: Path, option: str) -> None:
    """Refuse a path that cannot become a writable directory, creating nothing (a dry run stays
    without side effects; the first profile creates it). Writability is tested by writing a
    temporary file in the nearest existing directory: a permission test alone misses a read-only
    filesystem, and is always true for root."""
    existing = nearest_existing_dir(path, option)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: cannot write to {existing} ({exc.strerror or exc})") from None
