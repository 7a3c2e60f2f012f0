"""Backends. Importing this package registers every one of them (explicit imports, no scanning)."""

from collections.abc import Callable

from mlabench.backends import compiled, eager, flashinfer, flashmla, sdpa, triton_mla  # noqa: F401  (registration)
from mlabench.backends.registry import BACKENDS, BackendSpec, Prepared, StepInputs, served_variants
from mlabench.case import Case
from mlabench.errors import UsageError

# Backend options a suite's [options] table or a flag may set, each with the backend's own check.
OPTION_CHECKS: dict[str, Callable[[Case], object]] = {
    "compile_mode": compiled.compile_mode,
    "cpp_min_chunk_size": compiled.cpp_min_chunk_size,
    "sdpa_kernel": sdpa.sdpa_kernel_option,
    "num_splits": triton_mla.num_splits_option,
    "block_h": triton_mla.block_h_option,
    "block_n": triton_mla.block_n_option,
    "num_warps": triton_mla.num_warps_option,
    "num_stages": triton_mla.num_stages_option,
    "flashinfer_backend": flashinfer.flashinfer_backend_option,
}


def check_options(case: Case) -> None:
    """Reject unknown or invalid backend options before any case runs (UsageError names the option)."""
    for name, _ in case.options:
        if name not in OPTION_CHECKS:
            raise UsageError(f"options: unknown backend option {name!r} (choose from {', '.join(OPTION_CHECKS)})")
        OPTION_CHECKS[name](case)


__all__ = ["BACKENDS", "OPTION_CHECKS", "BackendSpec", "Prepared", "StepInputs", "check_options", "served_variants"]
