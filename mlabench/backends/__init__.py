"""Backends. Importing this package registers every one of them (explicit imports, no scanning)."""

from mlabench.backends import compiled, eager, flashinfer, flashmla, sdpa, triton_mla  # noqa: F401  (registration)
from mlabench.backends.registry import BACKENDS, BackendSpec, Prepared, StepInputs, served_variants

__all__ = ["BACKENDS", "BackendSpec", "Prepared", "StepInputs", "served_variants"]
