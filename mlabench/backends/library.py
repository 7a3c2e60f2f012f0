"""Third-party kernel libraries: loading them once, and the ones that cannot load or build here.

`optional_library` is each library backend's loader: imported once per process, a library
that is not installed is a reason to skip (`skipped`), one that is installed but fails to
import is a LoadFailure (`unsupported`). `gpu_unavailable` is the `unavailable` check of a
backend that needs such a library and a CUDA GPU of given compute capabilities; `required`
and `require_keywords` start its `prepare`: the library, with the arguments the backend calls.

FlashMLA and FlashInfer can be installed yet unusable: a wheel built without SM90 kernels,
FlashInfer's just-in-time build without nvcc, an older or newer API than the one called.
Those are facts about the installation, not failures of the case, so the calls that load,
plan or JIT-compile a library run inside `loading(name)`, which turns them into
`UnsupportedError` naming the library and its first line of explanation. A sticky CUDA
error is never translated: it must stop the sweep (errors.is_sticky_cuda_error).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import subprocess
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from mlabench.errors import UnsupportedError, is_sticky_cuda_error


class LoadFailure(str):
    """An `unavailable()` reason for a library that is installed but fails to import: the runner
    records it as `unsupported` (a broken installation), where a missing one is `skipped`."""


Loader = Callable[[], tuple[ModuleType | None, str | None]]


def optional_library(name: str, install_hint: str, *submodules: str) -> Loader:
    """A loader returning (the module, None) or (None, why not), imported on first use and then cached.

    `submodules` are imported too (`flashinfer.mla`): a library missing the part a backend
    calls is as unusable as a missing one."""

    @functools.cache
    def load() -> tuple[ModuleType | None, str | None]:
        try:
            lib = importlib.import_module(name)
            for sub in submodules:
                importlib.import_module(f"{name}.{sub}")
            return lib, None
        except ImportError:
            return None, f"{name} is not installed ({install_hint})"
        except Exception as err:  # a broken build (CUDA/ABI mismatch) raises OSError, RuntimeError, ...
            return None, LoadFailure(f"{name} failed to import: {type(err).__name__}: {err}")

    return load


def required(load: Loader) -> ModuleType:
    """The library `load` returns, for a backend's prepare; UnsupportedError with its reason when it
    does not load (the backend's `unavailable` says the same before any case)."""
    lib, reason = load()
    if lib is None:
        raise UnsupportedError(str(reason))
    return lib


def gpu_unavailable(load: Loader, device: torch.device, gpus: str, majors: Collection[int],
                    purpose: str) -> str | None:
    """A library backend's `unavailable` answer: None where the library `load` returns imports and
    `device` is a CUDA GPU whose compute capability's major is in `majors`; else one short reason,
    naming the GPUs it needs (`gpus`, e.g. "an SM90 (Hopper)") and what for (`purpose`)."""
    _, reason = load()
    if reason is not None:
        return reason
    device = torch.device(device)
    if device.type != "cuda":
        return f"needs {gpus} CUDA GPU, not {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in majors:
        return f"needs {gpus} GPU for {purpose}; this GPU is sm_{major}{minor}"
    return None


# Exception types that, raised by a library's load/plan/first call, mean "this build or API
# cannot serve the case": missing symbols, a changed signature or attribute, a wrapper's
# own contract assertions, a failed build subprocess.
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    ImportError, OSError, AttributeError, TypeError, AssertionError, NotImplementedError,
    subprocess.CalledProcessError,
)
# RuntimeError texts of a JIT build or a kernel missing for this GPU.
JIT_MARKERS: tuple[str, ...] = (
    "nvcc", "ninja", "jit", "compil", "no kernel image", "undefined symbol", "not compiled",
    "cuda_home", "unsupported gpu", "not supported", "sm90", "sm_90", "build",
)


def accepts(fn: object, name: str) -> bool:
    """Whether `fn` takes keyword `name` (assumed yes when it has no readable signature: the
    first call, inside `loading`, then says otherwise)."""
    try:
        params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def require_keywords(lib: object, lacking: str, **keywords: str) -> None:
    """UnsupportedError saying what this build of a library lacks (`lacking`, e.g. "this flash_mla has
    no sparse decode") when one of its functions takes no keyword the backend calls (`function=keyword`):
    an older release, where a newer one would serve the case."""
    for function, keyword in keywords.items():
        if not accepts(getattr(lib, function), keyword):
            raise UnsupportedError(f"{lacking} ({function} takes no {keyword})")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def library_failure(library: str, exc: BaseException) -> UnsupportedError | None:
    """The UnsupportedError a load/JIT failure of `library` becomes, or None for any other error."""
    if is_sticky_cuda_error(exc):
        return None
    if isinstance(exc, LOAD_ERRORS) or (
        isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in JIT_MARKERS)
    ):
        return UnsupportedError(f"{library} cannot load or build its kernels here: {_first_line(exc)}")
    return None


@contextmanager
def loading(library: str) -> Iterator[None]:
    """Run a library's load/plan/first-call code; its load or JIT failures become UnsupportedError."""
    try:
        yield
    except UnsupportedError:
        raise
    except Exception as exc:
        err = library_failure(library, exc)
        if err is None:
            raise
        raise err from exc
