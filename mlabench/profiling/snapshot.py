"""The CUDA caching allocator's history as a snapshot for PyTorch's memory viewer.

`recording(device, path)` records allocator events (with Python stacks) while its block runs and
dumps a pickle to `path` at the end; drag it onto https://pytorch.org/memory_viz. It records only
around the profiled steps, never during the timed samples (recording stacks slows every
allocation), but the dump holds every live segment, the KV cache allocated earlier included.
Snapshots are a CUDA allocator feature: on any other device nothing is recorded and
`recording` yields the reason instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

CPU_NOTE = "memory snapshots are CUDA-only (the CUDA caching allocator records them); none taken on {device}"


def snapshot_note(device_type: str) -> str | None:
    """Why `--memory-snapshot` records nothing on this device; None on CUDA."""
    return None if device_type == "cuda" else CPU_NOTE.format(device=device_type)
MAX_ENTRIES = 100_000  # allocator events kept: bounds the pickle for long profiles


@contextlib.contextmanager
def recording(device: torch.device, path: Path) -> Iterator[str | None]:
    """Record the allocator while the block runs and dump it to `path`; yields None, or why not."""
    why_not = snapshot_note(device.type)
    if why_not:
        yield why_not
        return
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES)
    try:
        yield None
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
