"""Exceptions that map to the CLI's exit codes (README, "Every command": 2 bad input, 3 not comparable).

Library code raises these with one clear sentence; the CLI turns them into one
line on stderr and the exit code, with a traceback only under MLABENCH_DEBUG=1.
"""

from __future__ import annotations


class MlabenchError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(MlabenchError):
    """Bad input: unknown names, impossible shapes, malformed files, bad flags."""

    exit_code = 2


class NotComparableError(MlabenchError):
    """`compare` inputs that must not be compared (different GPU, dtype, torch, shapes)."""

    exit_code = 3


class UnsupportedError(MlabenchError):
    """A (variant, backend, mode) combination that cannot run; becomes status `unsupported`."""


class SkippedError(MlabenchError):
    """A case that is not run here (missing library/hardware, would not fit); becomes `skipped`."""


class DeviceLostError(MlabenchError):
    """A sticky CUDA error: the context is unusable until the process exits, so every later
    case would fail too. The sweep stops, keeps its rows and tells how to resume."""


# CUDA errors after which the context stays broken (cudaGetLastError cannot clear them).
STICKY_CUDA_MARKERS: tuple[str, ...] = (
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "unspecified launch failure",
    "device-side assert",
    "uncorrectable ECC",
    "launch timed out",
    "hardware stack error",
    "invalid program counter",
    "an illegal address",
)


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """True for a CUDA error that poisons the process's context (illegal address, device assert, ...)."""
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in STICKY_CUDA_MARKERS)
class CaseTimeout(MlabenchError):
    """A case past its wall limit (`timeout_s`); becomes status `timeout`, and the sweep goes on."""
