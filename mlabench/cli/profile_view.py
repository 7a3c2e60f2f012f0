"""Printing a case's profile: the top-10 breakdown as a rich table, the files, the core-share check."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

TOP = 10


def print_profile(profile: Any, console: Console) -> None:
    """`profile` is a profiling.case.ProfileResult (not imported here: this module stays torch-free)."""
    bd = profile.breakdown
    console.print(f"{profile.label}: top {TOP} by {bd.unit}, over the profiled steps", soft_wrap=True,
                  markup=False, highlight=False)
    table = Table()
    table.add_column("name", overflow="fold")
    for col in ("calls/step", "total us", "share %"):
        table.add_column(col, justify="right")
    for row in bd.table.head(TOP).itertuples(index=False):
        table.add_row(str(row.name), f"{row.calls_per_step:g}", f"{row.total_us:,.0f}", f"{row.share_pct:.1f}")
    rest = bd.table.iloc[TOP:]
    if len(rest):
        table.add_row(f"({len(rest)} more)", "", f"{rest['total_us'].sum():,.0f}", f"{rest['share_pct'].sum():.1f}")
    console.print(table)
    line = profile.agreement()
    if line:
        console.print(line, soft_wrap=True)
    for note in profile.notes:
        console.print(note, soft_wrap=True, markup=False)
    files = [f"trace {profile.trace}", f"breakdown {profile.breakdown_csv}", f"summary {profile.summary}"]
    if profile.snapshot:
        files.append(f"memory snapshot {profile.snapshot}")
    console.print("profile: " + ", ".join(files), soft_wrap=True, markup=False, highlight=False)


def announce_profile(request: Any, device_type: str, console: Console) -> None:
    """One line before any case runs for what this device cannot profile (the run goes on)."""
    from mlabench.profiling.snapshot import snapshot_note

    if request is None:
        return
    if request.memory_snapshot and snapshot_note(device_type):
        console.print(snapshot_note(device_type), soft_wrap=True, markup=False)
    if request.nvtx and device_type != "cuda":
        console.print(f"--nvtx: NVTX ranges are CUDA-only; entered as no-ops on {device_type}",
                      soft_wrap=True, markup=False)
