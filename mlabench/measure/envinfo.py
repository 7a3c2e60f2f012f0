"""The environment fingerprint written to meta.json and shown by `mlabench env`.

compare refuses to judge runs whose fingerprints differ (GPU, torch), so
everything that changes timings belongs here.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import mlabench
from mlabench.measure.memory import open_nvml


def resolve_device(name: str) -> torch.device:
    """'auto' -> the best device present; validates cuda indices."""
    from mlabench.errors import UsageError

    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {name} requested but CUDA is not available here")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device: {name} does not exist ({torch.cuda.device_count()} CUDA devices)")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise UsageError(f"--device: unsupported device type {dev.type!r} (auto, cpu, cuda, cuda:N)")
    if dev.index not in (None, 0):  # torch accepts any cpu index; there is one CPU device
        raise UsageError(f"--device: {name} does not exist (the CPU is `cpu`)")
    return torch.device("cpu")


def device_label(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


GIT_COMMIT_ENV = "MLABENCH_GIT_COMMIT"


def git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit (`git describe --dirty`), else $MLABENCH_GIT_COMMIT: a working tree
    copied to a machine without its .git (a GPU box without network) still records where it came from."""
    root = root or Path(mlabench.__file__).resolve().parent.parent
    given = os.environ.get(GIT_COMMIT_ENV, "").strip() or None
    if not (root / ".git").exists():
        return given
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or given
    except (OSError, subprocess.SubprocessError):
        return given


def _triton_version() -> str | None:
    try:
        import triton

        return str(triton.__version__)
    except ImportError:
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": "cpu", "name": cpu_model(), "driver": None, "cuda": None, "capability": None,
                "memory_bytes": None}
    props = torch.cuda.get_device_properties(device)
    nvml = open_nvml(device)
    return {
        "type": "cuda",
        "name": props.name,
        "driver": nvml.driver() if nvml else None,
        "cuda": torch.version.cuda,
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
        "sm_count": props.multi_processor_count,
        "l2_bytes": int(getattr(props, "L2_cache_size", 0)) or None,
    }


def fingerprint(device: torch.device) -> dict[str, Any]:
    return {
        "mlabench_version": mlabench.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["mlabench", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "device": device_info(device),
        "cpu": {"model": cpu_model(), "threads": torch.get_num_threads()},
    }
