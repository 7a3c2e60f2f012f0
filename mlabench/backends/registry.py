"""Backend registry: each backend registers itself where it is defined.

A backend turns (variant module, case, step inputs) into a zero-argument
callable that runs one prefill or one decode step; only that callable is timed.
Setup (compilation, cache conversion, kernel selection) happens in `prepare`,
outside the closure. A backend that cannot run here says why through
`unavailable(device)`; one that cannot serve a particular case raises
`UnsupportedError` (status `unsupported`) or `SkippedError` (status `skipped`).

A backend's options (launch knobs, a compile mode, a kernel choice) are declared in the
same decorator, `options={"num_splits": check, ...}`: each check takes a case and
validates `case.option(name)`, raising UsageError naming the option. Options are part of
a case's identity, and a case carries only its own backend's (`backends.apply_options`).

`Prepared.core` is the attention core the backend swaps into the step (the core contract
of variants/attention.py), for timing scope "core": the runner calls it alone on the tensors
`module.core_inputs` returns. It is set up by the same `prepare` (plans, page pools,
compilation), so the core timed alone is the core the step runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from mlabench.case import MODES, Case
from mlabench.variants.attention import CoreAttention
from mlabench.variants.base import AttentionVariant
from mlabench.variants.registry import variant_names


@dataclass(frozen=True)
class StepInputs:
    """The new tokens of the timed step and where they start; the cache already holds the context."""

    x: Tensor  # (B, S, d)
    start_pos: int


@dataclass(frozen=True)
class Prepared:
    fn: Callable[[], Tensor]  # one step, returns (B, S, d)
    detail: str = ""  # recorded in `backend_detail` (chosen kernel, compile mode, ...)
    compile_ms: float | None = None  # one-off compile/autotune time, never mixed into latency
    # Bytes of a second copy of the KV cache the backend keeps (the paged pool FlashMLA and
    # FlashInfer read), recorded in `backend_cache_bytes`: real memory the step needs.
    extra_cache_bytes: int | None = None
    core: CoreAttention | None = None  # the core alone, timed in scope "core"; None: the backend has none


Prepare = Callable[[AttentionVariant, Case, StepInputs], Prepared]
OptionCheck = Callable[[Case], object]  # validates case.option(name); raises UsageError naming the option


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str
    serves: tuple[str, ...] | None  # the variants it can ever serve (None: every registered one)
    modes: tuple[str, ...]
    fused: bool
    prepare: Prepare
    unavailable: Callable[[torch.device], str | None]  # None when usable on that device, else why not
    options: Mapping[str, OptionCheck] = field(default_factory=dict, hash=False)  # option name -> its check
    # Modules a fork server imports once for every isolated case of this backend: what its first
    # case in a fresh process would otherwise import and set up itself (executors/isolate.py).
    preload: tuple[str, ...] = ()

    @property
    def variants(self) -> tuple[str, ...]:
        """Resolved on use, so a variant registered after the backend is served by `serves=None` ones."""
        return self.serves if self.serves is not None else variant_names()


BACKENDS: dict[str, BackendSpec] = {}


def _always_available(_device: torch.device) -> str | None:
    return None


def register_backend(
    name: str,
    *,
    description: str,
    variants: tuple[str, ...] | None = None,
    modes: tuple[str, ...] = MODES,
    fused: bool = False,
    unavailable: Callable[[torch.device], str | None] = _always_available,
    options: Mapping[str, OptionCheck] | None = None,
    preload: tuple[str, ...] = (),
) -> Callable[[Prepare], Prepare]:
    def deco(prepare: Prepare) -> Prepare:
        if name in BACKENDS:
            raise ValueError(f"backend {name!r} registered twice")
        served = tuple(variants) if variants is not None else None
        BACKENDS[name] = BackendSpec(name, description, served, tuple(modes), fused, prepare, unavailable,
                                     MappingProxyType(dict(options or {})), tuple(preload))
        return prepare

    return deco


def served_variants() -> dict[str, tuple[str, ...]]:
    """backend -> variants, for grid expansion (resolved now, so a variant registered after a
    backend is still served by the backends that serve every variant)."""
    return {name: spec.variants for name, spec in BACKENDS.items()}
