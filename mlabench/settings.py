"""A sweep's measurement settings: one frozen record whose fields are the settings.

Each field carries its default, its inclusive bounds and the command-line flag that
sets it, so the suite reader, the CLI, meta.json and the timing loop all read one
declaration. A value comes from, in order of precedence: a command-line flag, the
suite's `[settings]`, the default here (`SweepSettings.resolve`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlabench.errors import UsageError

if TYPE_CHECKING:
    from mlabench.measure.timing import TimingSettings


def _setting(default: Any, flag: str, bounds: tuple[float, float] | None = None) -> Any:
    return field(default=default, metadata={"flag": flag, "bounds": bounds})


# Bounds: past them a sweep would never return (an hour of sampling per case, a billion
# samples) or the runtime aborts (tens of thousands of threads).
@dataclass(frozen=True)
class SweepSettings:
    budget_s: float = _setting(0.5, "--budget", (0.0, 3600.0))  # time spent sampling one case, after warm-up
    warmup_s: float = _setting(0.1, "--warmup", (0.0, 600.0))
    min_samples: int = _setting(10, "--min-samples", (1, 100_000))
    max_samples: int = _setting(1000, "--max-samples", (1, 100_000))
    # CPU threads (0 = torch's default, all cores). One by default: on a shared host more threads make
    # samples bimodal (a step read 0.84 ms at 1 thread and 220 ms at 2 on a busy 2-core machine).
    threads: int = _setting(1, "--threads", (0, 1024))
    seed: int = _setting(0, "--seed", (0, 2**63 - 1))  # weights and inputs
    cuda_graph: bool = _setting(False, "--cuda-graph")  # GPU: time inside a CUDA graph (hot, launch cost removed)
    accuracy: bool = _setting(True, "--accuracy")  # compare each case to the float64 reference
    timeout_s: float = _setting(300.0, "--timeout", (0.001, 86_400.0))  # past it the case is a `timeout` row
    rounds: int = _setting(1, "--rounds", (1, 1000))  # passes over the case list, each in its own seeded order

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def flag(cls, name: str) -> str:
        """The command-line flag that sets `name`, for messages."""
        return _FIELDS[name].metadata["flag"]

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Some settings, each checked for name, type and bounds, and min_samples <= max_samples
        when both are given. `where` starts each refusal."""
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key == "tp":  # once a setting (an analytic column only), now what the cases run on
                raise UsageError(f"{where}: tp is a case axis, not a setting: give `tp = [1, 2]` in a [[grid]] "
                                 "(or sweep --tp 1,2), and each case runs on that many ranks")
            if key not in _FIELDS:
                raise UsageError(f"{where}: unknown setting {key!r} (allowed: {', '.join(cls.names())})")
            out[key] = _checked(_FIELDS[key], value, where)
        if out.get("min_samples", 0) > out.get("max_samples", math.inf):
            raise UsageError(f"{where}: min_samples ({out['min_samples']}) exceeds max_samples ({out['max_samples']})")
        return out

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any]) -> SweepSettings:
        """The defaults overlaid by each already-checked layer in turn (suite, then flags)."""
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer)
        settings = cls(**merged)
        if settings.min_samples > settings.max_samples:
            raise UsageError(f"min_samples ({settings.min_samples}) exceeds max_samples ({settings.max_samples})")
        return settings

    def as_dict(self) -> dict[str, Any]:
        """The settings as meta.json records them."""
        return dataclasses.asdict(self)

    @property
    def timing(self) -> TimingSettings:
        """What the timing loop of one case needs."""
        from mlabench.measure.timing import TimingSettings  # torch: keep this module importable without it

        return TimingSettings(budget_s=self.budget_s, warmup_s=self.warmup_s, min_samples=self.min_samples,
                              max_samples=self.max_samples, threads=self.threads, cuda_graph=self.cuda_graph)


_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(SweepSettings)}
_KINDS: dict[str, type] = {"float": float, "int": int, "bool": bool}


def _checked(f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    kind = _KINDS[str(f.type)]
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: setting {f.name!r} must be true or false, got {value!r}")
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok:
        what = "an integer" if kind is int else "a finite number"
        raise UsageError(f"{where}: setting {f.name!r} must be {what}, got {value!r}")
    low, high = f.metadata["bounds"]
    if not low <= value <= high:
        raise UsageError(f"{where}: setting {f.name!r} must be between {low:g} and {high:g}, got {value!r}")
    return kind(value)
