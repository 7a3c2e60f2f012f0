"""Exceptions that map to the CLI's exit codes (DESIGN.md: 2 bad input, 3 not comparable).

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


class CaseTimeout(MlabenchError):
    """A case past its wall limit (`timeout_s`); becomes status `timeout`, and the sweep goes on."""
