"""Shared pieces of the command modules: options declared once, consoles, parsing, formatting, JSON output.

An option two commands share is one `Annotated` alias here, so its flag and help text are
the same everywhere; each command gives only its default. Nothing here imports torch, so
`report` and `compare` stay light.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mlabench.errors import UsageError

# Progress, logs and tables for humans go to stderr unless they are the command's output.
err_console = Console(stderr=True, highlight=False)
# Piped or captured output gets a fixed width wide enough for the result tables.
out_console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)

INT_AXES = {"batch", "seq_len", "q_len"}

# --- options shared by several commands (groups of them: cli/flags.py) ------------------------

DeviceOpt = Annotated[str, typer.Option("--device", help="Device: auto (the best one present), cpu, cuda or cuda:N.",
                                        metavar="DEVICE")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a shape field, FIELD=VALUE (repeatable); `sweep` takes several values as an axis: "
                  "--set num_kv_heads=4,8.", metavar="FIELD=VALUE", show_default=False)]

ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Write report.html in the run directory.")]


def check_set_fields(assignments: dict[str, list[Any]], given: Mapping[str, Any] | None = None,
                     shape_only: bool = False) -> dict[str, list[Any]]:
    """--set's fields, each a case axis or a shape field (`shape_only`: a shape field), and none
    also given by its own flag; a misspelt name gets the nearest real one as a hint."""
    import difflib

    from mlabench.suites import CASE_AXES, SHAPE_AXES

    allowed = ("dtype", *SHAPE_AXES) if shape_only else (*CASE_AXES, *SHAPE_AXES)
    for key in assignments:
        if key in ("name", "model"):
            raise UsageError(f"--set {key}: the model preset is not a shape field; give --model NAME")
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]}?" if near else "`mlabench list` shows the presets' fields"
            raise UsageError(f"--set {key}: unknown field ({hint})")
        if key in (given or {}):
            raise UsageError(f"--set {key}: also given as --{key.replace('_', '-')}; give it once")
    return assignments


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


def split_seq_lens(option: str, text: str | None) -> list[Any] | None:
    """'1024,uniform:1-9,lognormal:median=4096,sigma=1' -> [1024, 'uniform:1-9', 'lognormal:...'].
    A context spec may hold a comma itself: a piece that is neither a length nor a spec (no ':')
    continues the spec before it."""
    pieces = split_list(option, text)
    if pieces is None:
        return None
    out: list[Any] = []
    for piece in pieces:
        if piece.isdigit():
            out.append(int(piece))
        elif ":" in piece or not out or not isinstance(out[-1], str):
            out.append(piece)  # a spec; a bad one is refused, naming it, when the grid expands
        else:
            out[-1] += "," + piece
    return out


def _number_or_text(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_assignments(items: list[str] | None) -> dict[str, list[Any]]:
    """--set num_kv_heads=4,8 --set rope_theta=1e6 -> {'num_kv_heads': [4, 8], 'rope_theta': [1e6]}."""
    out: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set: expected FIELD=VALUE[,VALUE...], got {item!r}")
        key, _, raw = item.partition("=")
        out[key.strip()] = [_number_or_text(v.strip()) for v in raw.split(",")]
    return out


def parse_options(items: list[str] | None, aliases: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """--option num_splits=4 --option compile_mode=max-autotune -> {'num_splits': 4, 'compile_mode': 'max-autotune'}.

    A value is read as --set reads one (an integer, else a number, else text), and true/false
    as a boolean. `aliases` are the dedicated flags (`--compile-mode`): option name -> value or
    None when not given. Names are checked against the backends by `backends.apply_options`."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not name or not raw:
            raise UsageError(f"--option: expected NAME=VALUE, got {item!r}")
        if name in out:
            raise UsageError(f"--option {name}: given twice")
        out[name] = {"true": True, "false": False}.get(raw.lower(), _number_or_text(raw))
    for name, value in (aliases or {}).items():
        if value is None:
            continue
        if name in out and out[name] != value:
            raise UsageError(f"--option {name}={out[name]} and --{name.replace('_', '-')} {value} disagree")
        out[name] = value
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
