"""Shared pieces of the command modules: consoles, list parsing, formatting, JSON output.

Nothing here imports torch, so `report` and `compare` stay light.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from mlabench.errors import UsageError

# Progress, logs and tables for humans go to stderr unless they are the command's output.
err_console = Console(stderr=True, highlight=False)
# Piped or captured output gets a fixed width wide enough for the result tables.
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)

INT_AXES = {"batch", "seq_len", "q_len"}


def split_list(option: str, text: str | None, kind: type = str) -> list[Any] | None:
    """'1,8, 64' -> [1, 8, 64]; None stays None; bad items name the option."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{option}: empty list")
    if kind is str:
        return items
    out = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise UsageError(f"{option}: {item!r} is not {'an integer' if kind is int else 'a number'}") from None
        out.append(value)
    return out


def parse_assignments(items: list[str] | None) -> dict[str, list[Any]]:
    """--set num_kv_heads=4,8 --set rope_theta=1e6 -> {'num_kv_heads': [4, 8], 'rope_theta': [1e6]}."""
    out: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set: expected FIELD=VALUE[,VALUE...], got {item!r}")
        key, _, raw = item.partition("=")
        values: list[Any] = []
        for v in raw.split(","):
            v = v.strip()
            try:
                values.append(int(v))
            except ValueError:
                try:
                    values.append(float(v))
                except ValueError:
                    values.append(v)
        out[key.strip()] = values
    return out


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def parse_bytes(option: str, text: str) -> int:
    """'80GiB', '80 GB', '1.5TiB', '123456' -> bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("kmgtib")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise UsageError(f"{option}: cannot read {text!r} as a size (e.g. 80GiB)") from None
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{option}: cannot read {text!r} as a positive size (e.g. 80GiB, 96GB)")
    return int(value * units[unit])


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def clean_for_json(value: Any) -> Any:
    """NaN/inf are not JSON: make them null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: clean_for_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_for_json(v) for v in value]
    return value


def write_report_or_warn(run_dir: Path) -> Path | None:
    """Write RUN_DIR/report.html; a failure is a warning, since the measurements are already on disk."""
    from mlabench.report.html import write_report

    try:
        return write_report(run_dir)
    except Exception as exc:
        err_console.print(f"[yellow]report not written: {exc}[/] (retry with `mlabench report {run_dir}`)")
        return None
