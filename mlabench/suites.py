"""Suites: TOML data (never executed) that expands into a validated list of cases.

    name = "smoke"
    description = "..."
    [settings]            # measurement settings (optional): budget_s, warmup_s, min_samples, ...
    [defaults]            # axis values applied to every [[grid]] unless it sets them
    backend = ["eager"]
    [[grid]]              # axes are lists (a scalar means a one-element list); the product is the grid
    model = ["tiny"]      # a preset name; any AttentionShape field may be overridden as an axis
    variant = ["mha", "mla-absorbed"]
    mode = ["prefill", "decode"]
    batch = [1, 4]
    seq_len = [128, 512]
    q_len = [1]           # decode only; prefill always runs q_len = seq_len
    dtype = ["auto"]      # auto: bfloat16 on CUDA, float32 on CPU
    scope = ["step"]      # step: the whole layer is timed; core: the attention core alone
    kv_dtype = ["auto"]   # what the cache stores: auto (the compute dtype), fp8_e4m3, fp8_e5m2
    seq_len = ["uniform:1024-32768"]  # a ragged batch: a context distribution (context.py), decode only
    cache_layout = ["contiguous", "paged:16"]  # paged caches (layout.py), decode only
    tp = [1, 2]           # tensor-parallel ranks, each holding its shard of the layer (mlabench.tp)

A `[cpu]` table (optional) holds axes that replace the grids' on a CPU device: a suite sized
for a GPU still runs on a CPU, at the same model dims with small batches and contexts.

A grid may set `suite = "claims"` (one name): its rows are recorded under that suite name
instead of the file's, so a suite can carry the claims configurations and the report still
finds them (claims are the rows with suite = "claims").

Names (variants, backends, models, modes, dtypes, fields) are checked before
any work and name the key at fault. Combinations a shape cannot serve (an MLA
variant on a model without latent ranks, q_len > seq_len) are dropped; a grid
that keeps no case is an error.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from mlabench.case import MODES, SCOPES, Case
from mlabench.config import (
    DTYPE_ALIASES,
    DTYPES,
    PRESETS,
    AttentionShape,
    ShapeError,
    canonical_dtype,
    canonical_kv_dtype,
    from_name,
    validate_case_dims,
)
from mlabench.context import MAX_RAGGED_BATCH, is_spec, parse_context
from mlabench.errors import UsageError
from mlabench.layout import parse_layout
from mlabench.settings import SweepSettings
from mlabench.variants.registry import shape_for_variant, variant_class, variant_names

CASE_AXES = ("model", "variant", "backend", "mode", "batch", "seq_len", "q_len", "dtype", "scope", "cache_layout",
             "tp")
SHAPE_AXES = tuple(f.name for f in fields(AttentionShape) if f.name not in ("name", "dtype"))
TOP_LEVEL_KEYS = {"name", "description", "settings", "defaults", "grid", "options", "cpu"}
# The most grid points one sweep plans, counted before any is expanded: past it a sweep runs for
# days and planning alone takes minutes (10**8 points never end), so it is refused at once.
MAX_GRID_POINTS = 100_000
# Suite names become directory names (results/runs/<time>-<suite>-<device>): no separators, no "..".
SUITE_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    grids: tuple[dict[str, list[Any]], ...]
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # backend options (compile_mode, sdpa_kernel, ...)
    cpu_axes: dict[str, list[Any]] = field(default_factory=dict)  # [cpu]: axes replacing the grids' on a CPU


def _suite_dirs() -> list[Path]:
    """Installed package data (`mlabench/suite_data`, a link to suites/ in a checkout),
    then a source checkout's top-level suites/."""
    dirs = []
    try:
        dirs.append(Path(str(resources.files("mlabench") / "suite_data")))
    except (ModuleNotFoundError, TypeError):
        pass
    dirs.append(Path(__file__).resolve().parent.parent / "suites")
    return [d for d in dirs if d.is_dir()]


def available_suites() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(_suite_dirs()):
        for p in sorted(d.glob("*.toml")):
            found[p.stem] = p
    return dict(sorted(found.items()))


def resolve_suite(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UsageError(f"suite: file not found: {name_or_path}")
        return p
    suites = available_suites()
    if name_or_path not in suites:
        raise UsageError(f"suite: unknown suite {name_or_path!r} "
                         f"(choose from {', '.join(suites)} or give a .toml path)")
    return suites[name_or_path]


def _as_list(key: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UsageError(f"suite: axis {key!r} is an empty list")
    for v in values:
        if isinstance(v, (dict, list)):
            raise UsageError(f"suite: axis {key!r} must hold scalars, got {v!r}")
    return values


_DTYPE_NAMES = frozenset(DTYPES) | frozenset(DTYPE_ALIASES)
_FLOAT_FIELDS = frozenset(f.name for f in fields(AttentionShape) if f.type in (float, "float"))
_STRING_AXES = frozenset({"model", "variant", "backend", "mode", "dtype", "scope", "kv_dtype", "cache_layout"})


def _check_type(key: str, value: Any, where: str) -> None:
    """Shape fields are numbers of their declared kind, and float fields finite: a string or NaN
    in `rope_theta` must be refused by name, not crash inside a layer or be silently measured."""
    if key in _STRING_AXES:
        if not isinstance(value, str):
            raise UsageError(f"suite: {key} must be a name, got {value!r} in {where}")
        if key == "cache_layout":
            _named(where, parse_layout, value)
        return
    if key == "seq_len" and is_spec(value):
        _named(where, parse_context, value)  # a ragged batch's distribution, refused here when malformed
        return
    if key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"suite: {key} must be a finite number, got {value!r} in {where}")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"suite: {key} must be an integer, got {value!r} in {where}")


def _named(where: str, parse: Any, value: Any) -> None:
    try:
        parse(value)
    except UsageError as exc:
        raise UsageError(f"suite: {exc} in {where}") from None


def _check_axes(where: str, table: Mapping[str, Any]) -> dict[str, list[Any]]:
    out = {}
    for key, value in table.items():
        if key == "suite":
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"suite: 'suite' in {where} must be one non-empty name, got {value!r}")
            out[key] = [value.strip()]
            continue
        if key not in CASE_AXES and key not in SHAPE_AXES:
            raise UsageError(f"suite: unknown key {key!r} in {where} (axes: {', '.join(CASE_AXES + SHAPE_AXES)})")
        out[key] = _as_list(key, value)
        for v in out[key]:
            _check_type(key, v, where)
    return out


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"suite: {path.name} is not a UTF-8 text file (binary content?)") from None
    except OSError as exc:
        raise UsageError(f"suite: cannot read {path} ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"suite: {path.name} is not valid TOML: {exc}") from None
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise UsageError(f"suite: unknown key {sorted(unknown)[0]!r} in {path.name} "
                         f"(allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    grids = data.get("grid")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"suite: {path.name} needs at least one [[grid]] table")
    tables = {key: _table(data, key, path.name) for key in ("defaults", "settings", "options", "cpu")}
    defaults = _check_axes("[defaults]", tables["defaults"])
    expanded = tuple({**defaults, **_check_axes(f"[[grid]] #{i + 1}", g)} for i, g in enumerate(grids))
    settings = SweepSettings.check(tables["settings"], f"suite: [settings] of {path.name}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not SUITE_NAME.fullmatch(name) or set(name) == {"."}:
        raise UsageError(f"suite: name {name!r} in {path.name} must be letters, digits, '.', '_' or '-' "
                         "(it becomes part of a directory name)")
    return Suite(name=name, description=str(data.get("description", "")),
                 path=str(path), grids=expanded, settings=settings, options=dict(tables["options"]),
                 cpu_axes=_check_axes("[cpu]", tables["cpu"]))


def _table(data: Mapping[str, Any], key: str, file: str) -> dict[str, Any]:
    """A suite's optional table, {} when absent; a value that is not a table is refused by name."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"suite: [{key}] of {file} must be a table, got {value!r}")
    return value


def _check_names(axes: Mapping[str, list[Any]], backends: Iterable[str], where: str) -> None:
    known = {"model": list(PRESETS), "variant": list(variant_names()), "backend": list(backends), "mode": list(MODES),
             "scope": list(SCOPES)}
    for axis, allowed in known.items():
        for v in axes.get(axis, []):
            if v not in allowed:
                raise UsageError(f"suite: {axis} {v!r} in {where} is unknown (choose from {', '.join(allowed)})")
    for v in axes.get("dtype", []):
        if v != "auto":
            try:
                canonical_dtype(v)
            except ShapeError as exc:
                raise UsageError(f"suite: {exc} in {where}") from None
    for v in axes.get("kv_dtype", []):
        try:  # a known dtype that is not the case's compute dtype is dropped per case, not refused here
            canonical_kv_dtype(v, canonical_dtype(v) if str(v).lower() in _DTYPE_NAMES else "float32")
        except ShapeError as exc:
            raise UsageError(f"suite: {exc} in {where}") from None
    for axis in ("batch", "seq_len", "q_len", "tp"):
        for v in axes.get(axis, []):
            if axis == "seq_len" and is_spec(v):
                continue  # a distribution, parsed by _check_axes
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UsageError(f"suite: {axis} must be positive integers, got {v!r} in {where}")
    ragged = next((v for v in axes.get("seq_len", []) if is_spec(v)), None)
    big = max((v for v in axes.get("batch", [1]) if v > MAX_RAGGED_BATCH), default=None)
    if ragged is not None and big is not None:
        raise UsageError(f"suite: batch {big} with the ragged seq_len {ragged!r} in {where}: a ragged batch "
                         f"holds at most {MAX_RAGGED_BATCH} sequences")


@dataclass
class Expansion:
    cases: list[Case]
    dropped: list[str]  # one reason per invalid combination dropped
    # Grid points that turned out to be a case already in the list because the axes they differ
    # in do not apply to their variant (num_kv_heads for MLA): one line each, naming those axes.
    merged: list[str] = field(default_factory=list)


def expand(suite: Suite, device: str, backends: Mapping[str, Iterable[str]],
           overrides: Mapping[str, list[Any]] | None = None) -> Expansion:
    """The grid's cases for `device`. `backends` maps backend name -> variants it serves;
    `overrides` replaces whole axes (from the command line)."""
    overrides = dict(overrides or {})
    _check_axes("command-line overrides", overrides)
    cases: list[Case] = []
    seen: dict[str, dict[str, Any]] = {}  # case id -> the grid point that first produced it
    dropped: list[str] = []
    merged: list[str] = []
    shapes: dict[tuple[Any, ...], AttentionShape | ShapeError] = {}  # points differing in batch or length share one
    if suite.cpu_axes:  # a bad value there is the [cpu] table's, not the grid's it replaces an axis of
        _check_names(suite.cpu_axes, backends, f"[cpu] of {suite.name}")
    grids = _grid_axes(suite, device, backends, overrides)
    _check_size(grids)
    for where, axes in grids:
        shape_axes = [a for a in SHAPE_AXES if a in axes]
        names = list(CASE_AXES) + shape_axes
        kept = 0
        for combo in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, combo, strict=True))
            if point["mode"] == "prefill" and point["q_len"] != axes["q_len"][0]:
                continue  # q_len does not apply to prefill: one case, not one per q_len
            if point["variant"] not in backends[point["backend"]]:
                continue  # the backend never serves this variant
            case = _make_case(axes.get("suite", [suite.name])[0], device, point, shape_axes, dropped, shapes)
            if case is None:
                continue
            kept += 1
            first = seen.get(case.case_id)
            if first is None:
                seen[case.case_id] = point
                cases.append(case)
            elif first != point:  # an identical point (overlapping grids) is no news; a differing one is
                merged.append(_merge_reason(first, point))
        if kept == 0 and not overrides:  # a suite grid that can never run is a bug in the suite
            reason = f" (last reason: {dropped[-1]})" if dropped else ""
            raise UsageError(f"suite: {where} produces no valid case{reason}")
    if not cases:
        reason = f" (last reason: {dropped[-1]})" if dropped else ""
        raise UsageError(f"suite: {suite.name} with these overrides produces no valid case{reason}")
    return Expansion(cases=cases, dropped=dropped, merged=merged)


def _grid_axes(suite: Suite, device: str, backends: Mapping[str, Iterable[str]],
               overrides: Mapping[str, list[Any]]) -> list[tuple[str, dict[str, list[Any]]]]:
    """Each grid's axes on `device` (the [cpu] table's and the overrides replacing its own, defaults
    filled in), names checked, with the words that name the grid in a message."""
    cpu = suite.cpu_axes if device.startswith("cpu") else {}
    grids = []
    for i, grid in enumerate(suite.grids):
        axes = {**grid, **cpu, **overrides}
        where = f"[[grid]] #{i + 1} of {suite.name}" if not overrides else f"{suite.name} with overrides"
        _check_names(axes, backends, where)
        missing = [a for a in ("model", "variant") if a not in axes]
        if missing:
            raise UsageError(f"suite: {where} has no {missing[0]!r} axis")
        for axis, default in (("backend", "eager"), ("mode", "decode"), ("batch", 1), ("seq_len", 1024), ("q_len", 1),
                              ("dtype", "auto"), ("scope", "step"), ("cache_layout", "contiguous"), ("tp", 1)):
            axes.setdefault(axis, [default])
        grids.append((where, axes))
    return grids


def _check_size(grids: list[tuple[str, dict[str, list[Any]]]]) -> None:
    """Refuse grids past MAX_GRID_POINTS in all, counted from the axes' lengths before any is expanded."""
    total = 0
    for where, axes in grids:
        size = math.prod(len(values) for values in axes.values())
        total += size
        if total > MAX_GRID_POINTS:
            shown = " x ".join(f"{len(v)} {a}" for a, v in axes.items() if len(v) > 1) or "1"
            more = f", {total:,} with the grids before it" if total > size else ""
            raise UsageError(f"suite: {where} has {size:,} grid points ({shown}){more}, more than the "
                             f"{MAX_GRID_POINTS:,} one sweep plans; give fewer axis values")


def _merge_reason(first: Mapping[str, Any], point: Mapping[str, Any]) -> str:
    axes = [a for a in sorted(set(first) | set(point)) if first.get(a) != point.get(a)]
    now = ", ".join(f"{a}={point.get(a)!r}" for a in axes)
    before = ", ".join(f"{a}={first.get(a)!r}" for a in axes)
    return (f"{point['model']} {point['variant']}/{point['backend']}: {now} is the same case as {before} "
            f"({point['variant']} does not use {'it' if len(axes) == 1 else 'them'})")


def _make_case(suite: str, device: str, point: dict[str, Any], shape_axes: list[str],
               dropped: list[str], shapes: dict[tuple[Any, ...], AttentionShape | ShapeError]) -> Case | None:
    """One grid point as a case (without backend options: `backends.apply_options` adds them),
    or None with the reason appended to `dropped`. `shapes`: the shapes built so far, by what makes them."""
    dtype = point["dtype"]
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    seq_len, context = point["seq_len"], ""
    layout = parse_layout(point["cache_layout"])
    if (is_spec(seq_len) or layout.paged) and point["mode"] == "prefill":
        dropped.append(f"{point['model']} {point['variant']}: ragged contexts and paged caches are decode steps")
        return None
    if is_spec(seq_len):
        spec = parse_context(seq_len)
        lengths = spec.lengths(point["batch"])
        if min(lengths) < point["q_len"]:
            dropped.append(f"{point['model']} {point['variant']}: {spec.text} draws a context of {min(lengths)} "
                           f"tokens for batch {point['batch']}, shorter than q_len {point['q_len']}")
            return None
        seq_len, context = max(lengths), spec.text
    q_len = seq_len if point["mode"] == "prefill" else point["q_len"]
    made = (point["model"], point["variant"], dtype, *(point[a] for a in shape_axes))
    if made not in shapes:
        try:
            shapes[made] = shape_for_variant(point["variant"], from_name(point["model"], dtype=dtype,
                                                                          **{a: point[a] for a in shape_axes}))
        except ShapeError as exc:
            shapes[made] = exc
    try:
        shape = shapes[made]
        if isinstance(shape, ShapeError):
            raise shape
        validate_case_dims(point["batch"], seq_len, q_len)
    except ShapeError as exc:
        dropped.append(f"{point['model']} {point['variant']}: {exc}")
        return None
    why = variant_class(point["variant"]).no_serving_layouts(shape) if context or layout.paged else ""
    if why:
        dropped.append(f"{point['model']} {point['variant']}: {why} (no ragged or paged cache)")
        return None
    return Case(suite=suite, model=point["model"], variant=point["variant"], backend=point["backend"],
                mode=point["mode"], device=device, batch=point["batch"], seq_len=seq_len,
                q_len=q_len, shape=shape, scope=point["scope"], context=context, cache_layout=layout.text,
                tp=point["tp"])


def shard(cases: list[Case], k: int, n: int) -> list[Case]:
    """A deterministic 1/n of the cases (by case id, so every host computes the same split)."""
    return [c for c in cases if int(c.case_id, 16) % n == k - 1]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard: expected K/N like 2/4, got {text!r}") from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard: need 1 <= K <= N, got {text!r}")
    return k, n
