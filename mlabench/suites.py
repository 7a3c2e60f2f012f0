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

Names (variants, backends, models, modes, dtypes, fields) are checked before
any work and name the key at fault. Combinations a shape cannot serve (an MLA
variant on a model without latent ranks, q_len > seq_len) are dropped; a grid
that keeps no case is an error.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from mlabench.case import MODES, Case
from mlabench.config import (
    PRESETS,
    VARIANTS,
    AttentionShape,
    ShapeError,
    canonical_dtype,
    from_name,
    shape_for_variant,
    validate_case_dims,
)
from mlabench.errors import UsageError

CASE_AXES = ("model", "variant", "backend", "mode", "batch", "seq_len", "q_len", "dtype")
SHAPE_AXES = tuple(f.name for f in fields(AttentionShape) if f.name not in ("name", "dtype"))
TOP_LEVEL_KEYS = {"name", "description", "settings", "defaults", "grid", "options"}
SETTINGS = {
    "budget_s": float,  # time spent sampling one case (after warm-up)
    "warmup_s": float,
    "min_samples": int,
    "max_samples": int,
    "threads": int,  # CPU thread count (0 = leave torch's default)
    "seed": int,
    "cuda_graph": bool,  # GPU: time inside a CUDA graph (hot, launch overhead removed)
    "accuracy": bool,  # compare each case to the float64 reference
    "rounds": int,  # passes over the case list, each in its own seeded order (the gate's replicates)
}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    grids: tuple[dict[str, list[Any]], ...]
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # backend options (compile_mode, sdpa_kernel, ...)


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


def _check_axes(where: str, table: Mapping[str, Any]) -> dict[str, list[Any]]:
    out = {}
    for key, value in table.items():
        if key not in CASE_AXES and key not in SHAPE_AXES:
            raise UsageError(f"suite: unknown key {key!r} in {where} (axes: {', '.join(CASE_AXES + SHAPE_AXES)})")
        out[key] = _as_list(key, value)
    return out


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"suite: {path.name} is not valid TOML: {exc}") from None
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise UsageError(f"suite: unknown key {sorted(unknown)[0]!r} in {path.name} "
                         f"(allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    grids = data.get("grid")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"suite: {path.name} needs at least one [[grid]] table")
    defaults = _check_axes("[defaults]", data.get("defaults", {}))
    expanded = tuple({**defaults, **_check_axes(f"[[grid]] #{i + 1}", g)} for i, g in enumerate(grids))
    settings = check_settings(data.get("settings", {}), f"[settings] of {path.name}")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise UsageError(f"suite: [options] of {path.name} must be a table")
    return Suite(name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
                 path=str(path), grids=expanded, settings=settings, options=dict(options))


def check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in settings.items():
        if key not in SETTINGS:
            raise UsageError(f"suite: unknown setting {key!r} in {where} (allowed: {', '.join(SETTINGS)})")
        kind = SETTINGS[key]
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0)
        if kind is int and ok:
            ok = float(value).is_integer()
        if not ok:
            raise UsageError(f"suite: setting {key!r} in {where} must be a non-negative {kind.__name__}, got {value!r}")
        out[key] = kind(value)
    return out


def _check_names(axes: Mapping[str, list[Any]], backends: Iterable[str], where: str) -> None:
    known = {"model": list(PRESETS), "variant": list(VARIANTS), "backend": list(backends), "mode": list(MODES)}
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
    for axis in ("batch", "seq_len", "q_len"):
        for v in axes.get(axis, []):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UsageError(f"suite: {axis} must be positive integers, got {v!r} in {where}")


@dataclass
class Expansion:
    cases: list[Case]
    dropped: list[str]  # one reason per invalid combination dropped


def expand(suite: Suite, device: str, backends: Mapping[str, Iterable[str]],
           overrides: Mapping[str, list[Any]] | None = None) -> Expansion:
    """The grid's cases for `device`. `backends` maps backend name -> variants it serves;
    `overrides` replaces whole axes (from the command line)."""
    overrides = dict(overrides or {})
    _check_axes("command-line overrides", overrides)
    cases: list[Case] = []
    seen: set[str] = set()
    dropped: list[str] = []
    for i, grid in enumerate(suite.grids):
        axes = {**grid, **overrides}
        where = f"[[grid]] #{i + 1} of {suite.name}" if not overrides else f"{suite.name} with overrides"
        _check_names(axes, backends, where)
        missing = [a for a in ("model", "variant") if a not in axes]
        if missing:
            raise UsageError(f"suite: {where} has no {missing[0]!r} axis")
        axes.setdefault("backend", ["eager"])
        axes.setdefault("mode", ["decode"])
        axes.setdefault("batch", [1])
        axes.setdefault("seq_len", [1024])
        axes.setdefault("q_len", [1])
        axes.setdefault("dtype", ["auto"])
        shape_axes = [a for a in SHAPE_AXES if a in axes]
        names = list(CASE_AXES) + shape_axes
        kept = 0
        for combo in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, combo, strict=True))
            if point["mode"] == "prefill" and point["q_len"] != axes["q_len"][0]:
                continue  # q_len does not apply to prefill: one case, not one per q_len
            if point["variant"] not in backends[point["backend"]]:
                continue  # the backend never serves this variant
            case = _make_case(suite.name, device, point, shape_axes, suite.options, dropped)
            if case is None:
                continue
            kept += 1
            if case.case_id not in seen:  # grids may overlap, and overrides make them overlap more
                seen.add(case.case_id)
                cases.append(case)
        if kept == 0 and not overrides:  # a suite grid that can never run is a bug in the suite
            reason = f" (last reason: {dropped[-1]})" if dropped else ""
            raise UsageError(f"suite: {where} produces no valid case{reason}")
    if not cases:
        reason = f" (last reason: {dropped[-1]})" if dropped else ""
        raise UsageError(f"suite: {suite.name} with these overrides produces no valid case{reason}")
    return Expansion(cases=cases, dropped=dropped)


def _make_case(suite: str, device: str, point: dict[str, Any], shape_axes: list[str],
               options: Mapping[str, Any], dropped: list[str]) -> Case | None:
    dtype = point["dtype"]
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    q_len = point["seq_len"] if point["mode"] == "prefill" else point["q_len"]
    try:
        shape = from_name(point["model"], dtype=dtype, **{a: point[a] for a in shape_axes})
        shape = shape_for_variant(point["variant"], shape)
        validate_case_dims(point["batch"], point["seq_len"], q_len)
    except ShapeError as exc:
        dropped.append(f"{point['model']} {point['variant']}: {exc}")
        return None
    return Case(suite=suite, model=point["model"], variant=point["variant"], backend=point["backend"],
                mode=point["mode"], device=device, batch=point["batch"], seq_len=point["seq_len"],
                q_len=q_len, shape=shape, options=tuple(sorted(options.items())))


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
