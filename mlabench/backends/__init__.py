"""Backends. Importing this package registers every one of them (explicit imports, no scanning)."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from mlabench.backends import compiled, eager, flashinfer, flashmla, sdpa, triton_mla  # noqa: F401  (registration)
from mlabench.backends.registry import BACKENDS, BackendSpec, Prepared, StepInputs, served_variants
from mlabench.case import Case
from mlabench.errors import UsageError

# Backend options a suite's [options] table or a flag may set: name -> (the backend it
# configures, that backend's check). A case carries only its own backend's options, so
# `compile_mode` changes the identity of `compiled` cases and of no other.
OPTIONS: dict[str, tuple[str, Callable[[Case], object]]] = {
    "compile_mode": ("compiled", compiled.compile_mode),
    "cpp_min_chunk_size": ("compiled", compiled.cpp_min_chunk_size),
    "sdpa_kernel": ("sdpa", sdpa.sdpa_kernel_option),
    "num_splits": ("triton", triton_mla.num_splits_option),
    "block_h": ("triton", triton_mla.block_h_option),
    "block_n": ("triton", triton_mla.block_n_option),
    "num_warps": ("triton", triton_mla.num_warps_option),
    "num_stages": ("triton", triton_mla.num_stages_option),
    "flashinfer_backend": ("flashinfer", flashinfer.flashinfer_backend_option),
}


def apply_options(cases: list[Case], options: Mapping[str, Any]) -> list[Case]:
    """Give each case the options of its own backend, checked (UsageError names the option).

    Unknown names are refused even when no case of their backend is in the grid: a typo
    must not pass silently."""
    for name in options:
        if name not in OPTIONS:
            raise UsageError(f"options: unknown backend option {name!r} (choose from {', '.join(OPTIONS)})")
    out = []
    for case in cases:
        own = tuple(sorted((k, v) for k, v in options.items() if OPTIONS[k][0] == case.backend))
        case = dataclasses.replace(case, options=own) if own != case.options else case
        for name, _ in own:
            OPTIONS[name][1](case)
        out.append(case)
    return out


__all__ = ["BACKENDS", "OPTIONS", "BackendSpec", "Prepared", "StepInputs", "apply_options", "served_variants"]
