"""The frontier's plan as a record: what was planned, kept as `frontier.json` in the run directory.

Torch-free, so the report and the results table read it without importing torch. The plan is
written once before any case runs; a `--resume` of the same command plans the same points and
must find the same record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlabench.errors import UsageError
from mlabench.frontier import FRONTIER_JSON


@dataclass(frozen=True)
class FrontierPoint:
    """One variant at one context: the largest batch that fits, or why none does."""

    variant: str
    context: int  # tokens per sequence, T
    max_batch: int  # B_max(T); 0 when not even one sequence fits
    capped: bool  # B_max was cut to the plan's max_batch (the budget holds more)
    kv_bytes_per_gpu: int  # the whole model's cache at B_max on one GPU (0 when B_max is 0)
    backends: tuple[str, ...] = ()  # the plan's backends that serve this variant
    reason: str = ""  # why the point is not measured (B_max is 0, or no backend serves it)

    @property
    def measured(self) -> bool:
        return self.max_batch > 0 and bool(self.backends)


@dataclass(frozen=True)
class FrontierPlan:
    """Everything the points depend on, so that a reader can recompute tokens per second."""

    model: str
    dtype: str  # compute dtype
    kv_dtype: str  # what the cache stores
    layers: int  # L: tokens/s counts one step of every layer
    tp: int  # GPUs of one tensor-parallel group; the budget is one GPU's
    cache_layout: str  # '' for contiguous, else paged:N
    memory_bytes: int  # one GPU's memory
    reserve_bytes: int  # held back for weights, activations and workspace
    max_batch: int  # the cap on B_max
    contexts: tuple[int, ...]
    points: tuple[FrontierPoint, ...]

    @property
    def budget_bytes(self) -> int:
        """What one GPU's KV cache may use."""
        return self.memory_bytes - self.reserve_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "budget_bytes": self.budget_bytes}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FrontierPlan:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in doc.items() if k in fields}
        points = tuple(FrontierPoint(**{**p, "backends": tuple(p.get("backends", ()))}) for p in doc["points"])
        return cls(**{**values, "contexts": tuple(values["contexts"]), "points": points})

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        target = run_dir / FRONTIER_JSON
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)  # never a half-written plan beside the rows


def read_plan(run_dir: str | Path) -> FrontierPlan | None:
    """The plan kept in `run_dir`, or None when the run is not a frontier run."""
    path = Path(run_dir) / FRONTIER_JSON
    if not path.is_file():
        return None
    try:
        return FrontierPlan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a frontier plan ({exc})") from None


__all__ = ["FrontierPlan", "FrontierPoint", "read_plan"]
