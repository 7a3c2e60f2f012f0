"""Memory: what a cache costs, four ways, and whether a case can fit at all.

- analytic: `analytic.kv_cache_bytes` (exact formula);
- measured: the nbytes of the cache tensors the module allocated (must equal analytic);
- allocator: torch's CUDA allocator `memory_allocated` delta around the allocation;
- NVML: the device's used-memory delta (nvidia-ml-py, imported as `pynvml`),
  which sees the allocator's segment granularity (2 MiB pages, larger segments).
On CPU the allocator and NVML columns stay empty.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlabench import analytic
from mlabench.case import Case
from mlabench.variants.registry import variant_class


@dataclass(frozen=True)
class AllocationDelta:
    allocator: int | None
    nvml: int | None


class NvmlDevice:
    """Used-memory reads for the CUDA device torch calls `index` (matched by UUID)."""

    def __init__(self, index: int):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError:  # MIG or odd UUID forms: fall back to the index
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def driver(self) -> str:
        v = self._nvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)


def open_nvml(device: torch.device) -> NvmlDevice | None:
    if device.type != "cuda":
        return None
    try:
        return NvmlDevice(device.index or 0)
    except Exception:  # no NVML library, no permission, old driver: the column stays empty
        return None


def measure_allocation(allocate: Callable[[], None], device: torch.device, nvml: NvmlDevice | None) -> AllocationDelta:
    """Run `allocate` and report the allocator and NVML deltas it caused (CUDA only)."""
    if device.type != "cuda":
        allocate()
        return AllocationDelta(None, None)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # so the allocation needs fresh segments NVML can see
    before_alloc = torch.cuda.memory_allocated(device)
    before_nvml = nvml.used() if nvml else None
    allocate()
    torch.cuda.synchronize(device)
    alloc = torch.cuda.memory_allocated(device) - before_alloc
    nv = nvml.used() - before_nvml if nvml and before_nvml is not None else None
    return AllocationDelta(alloc, nv)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2) means no limit


def cgroup_available_bytes() -> int | None:
    """Room left under this process's cgroup memory limit (v2, then v1); None without a limit.

    A container's limit is usually far below the host's MemAvailable, and the kernel kills
    the process at the limit, so the pre-flight must see it."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes a huge number for "none"
            return max(limit - usage, 0)
    return None


def available_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; capped by the cgroup limit."""
    host: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = None
    room = cgroup_available_bytes()
    if room is None:
        return host
    return room if host is None else min(host, room)


def sdpa_expands_kv(case: Case) -> bool:
    """Whether the case's core repeats K and V to every query head: SDPA's math kernel does, and on
    the CPU it serves SDPA whenever K's and V's head widths differ (the fused CPU kernel takes one
    width) or the case asks for it. The variants' own cores read grouped views and never do, nor
    does the compiled step (it compiles them)."""
    if case.backend != "sdpa":
        return False
    sh = case.shape
    q_w, o_w = variant_class(case.variant).qo_widths(sh)  # a query head is as wide as K's, an output head as V's
    return q_w != o_w or case.option("sdpa_kernel", "auto") == "math"


def step_transient_bytes(case: Case, expands_kv: bool | None = None) -> int:
    """What one step allocates beyond weights and cache: its activations (the new tokens'
    projections), the score matrix (fp32, with softmax's copies) over the keys the plain cores
    score, the working copies of the attended K and V (`context_working_bytes`), and the variant's own
    re-expanded K/V or other context-sized buffers (`transient_elements`).

    `expands_kv`: whether the core repeats K and V per query head; by default `sdpa_expands_kv`."""
    sh, step = case.shape, case.step
    eb = sh.element_bytes
    cls = variant_class(case.variant)
    heads = sh.num_heads
    scores = case.batch * heads * step.new_tokens * cls.scored_keys(sh, step) * 4 * 3
    head_width = max(sh.qk_head_dim, sh.head_dim, sh.value_dim, sh.kv_lora_rank + sh.rope_head_dim)
    width = max(sh.hidden_size, heads * head_width)
    activations = case.batch * step.new_tokens * width * eb * 6
    expands = sdpa_expands_kv(case) if expands_kv is None else expands_kv
    working = cls.context_working_bytes(sh, step, expands)
    expanded = cls.transient_elements(sh, step) * eb
    if sh.kv_quantized:  # an FP8 cache is read dequantized: an fp32 copy of the context, then the compute dtype
        expanded += cls.kv_cache_elements(sh, case.batch, case.seq_len) * (4 + eb)
    return scores + activations + working + expanded


def reference_bytes(case: Case) -> int:
    """What the float64 reference allocates: a float64 copy of the weights and of the reference
    sequences' cache (accuracy.reference_rows: at most two), and its eager step's transient bytes."""
    sh = case.shape
    weights = variant_class(case.variant).param_count(sh, seq_len=case.seq_len) * sh.element_bytes
    cache = analytic.kv_cache_bytes(case.variant, sh, case.batch, case.seq_len)
    share = min(case.batch, 2) / case.batch
    return int((weights + (cache + step_transient_bytes(case, expands_kv=False)) * share) * 8 / sh.element_bytes)


def estimate_case_bytes(case: Case, accuracy: bool) -> int:
    """A generous upper bound of what a case allocates: weights, cache and the larger of one
    step's transient bytes (`step_transient_bytes`) and, when checked, the float64 reference's
    (`reference_bytes`). The two never coexist: the step's buffers are freed before the reference
    runs, and the reference's before the timed steps."""
    sh = case.shape
    weights = variant_class(case.variant).param_count(sh, seq_len=case.seq_len) * sh.element_bytes
    cache = analytic.kv_cache_bytes(case.variant, sh, case.batch, case.seq_len)
    transient = step_transient_bytes(case)
    if accuracy:
        transient = max(transient, reference_bytes(case))
    return weights + cache + transient
