"""Backends. Importing this package registers every one of them (explicit imports, no scanning).

Backend options are declared where each backend is registered (`register_backend(options=...)`);
`apply_options` hands every case its own backend's share of a suite's or the command line's options.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from mlabench.backends import (  # noqa: F401  (registration)
    compiled,
    eager,
    fa3_qv,
    flashinfer,
    flashmla,
    flashmla_sparse,
    sdpa,
    triton_mla,
)
from mlabench.backends.registry import BACKENDS, BackendSpec, Prepared, StepInputs, served_variants
from mlabench.case import Case
from mlabench.errors import UsageError


def option_names() -> list[str]:
    """Every backend option name, in registration order, once."""
    return list(dict.fromkeys(name for spec in BACKENDS.values() for name in spec.options))


def apply_options(cases: list[Case], options: Mapping[str, Any]) -> list[Case]:
    """Give each case the options its own backend declares, checked (UsageError names the option),
    so `compile_mode` changes the identity of `compiled` cases and of no other.

    Unknown names are refused even when no case of their backend is in the grid: a typo
    must not pass silently."""
    known = option_names()
    for name in options:
        if name not in known:
            raise UsageError(f"options: unknown backend option {name!r} (choose from {', '.join(known)})")
    out = []
    for case in cases:
        checks = BACKENDS[case.backend].options if case.backend in BACKENDS else {}
        own = tuple(sorted((k, v) for k, v in options.items() if k in checks))
        case = dataclasses.replace(case, options=own) if own != case.options else case
        for name, _ in own:
            checks[name](case)
        out.append(case)
    return out


__all__ = ["BACKENDS", "BackendSpec", "Prepared", "StepInputs", "apply_options", "option_names", "served_variants"]
