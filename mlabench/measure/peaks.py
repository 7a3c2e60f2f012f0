"""Roofline peaks: memory bandwidth and matmul rate measured on the device, a spec table as fallback.

`roofline_pct = 100 * max(flops / peak_flops, bytes / peak_bw) / latency`: the
share of the physical floor a step reached. Peaks are probed (large square matmul in the
case's dtype; bandwidth two ways), since spec sheets overstate what a given board, clock
and driver deliver.

Bandwidth probes: a copy (read + write, half of the traffic each way) and a read-dominated
sum (reads the buffer, writes one number). A decode step reads its cache and writes next
to nothing, so the read probe is its floor and roofline_pct uses it when it ran; the copy
figure is recorded beside it. `Peaks.bandwidth_probe` says which one `bytes_per_s` is, and
meta.json and the report show it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from mlabench.config import canonical_dtype
from mlabench.measure.timing import TimingSettings, device_scope, time_step
from mlabench.variants.registry import torch_dtype

# Dense (no sparsity) vendor figures, used only when probing is impossible: (bf16/fp16 FLOP/s, bytes/s).
SPEC_TABLE: dict[str, tuple[float, float]] = {
    "H100 SXM": (989e12, 3.35e12),
    "H100 PCIe": (756e12, 2.0e12),
    "H100 NVL": (835e12, 3.9e12),
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "H800": (989e12, 3.35e12),
    "H20": (148e12, 4.0e12),
    "A100": (312e12, 2.0e12),
    "L40S": (362e12, 0.864e12),
    "B200": (2250e12, 8.0e12),
}



@dataclass
class Peaks:
    bytes_per_s: float | None = None  # the bandwidth roofline_pct uses (see bandwidth_probe)
    flops_per_s: dict[str, float] = field(default_factory=dict)  # by dtype name
    source: str = "none"  # probe | spec | none
    bandwidth_probe: str = "none"  # read | copy | spec | none: what bytes_per_s measured
    copy_bytes_per_s: float | None = None
    read_bytes_per_s: float | None = None

    def flops_for(self, dtype: str) -> float | None:
        return self.flops_per_s.get(dtype)

    def as_meta(self, main_dtype: str | None = None) -> dict[str, object]:
        main = self.flops_for(main_dtype) if main_dtype else next(iter(self.flops_per_s.values()), None)
        return {"flops_per_s": main, "bytes_per_s": self.bytes_per_s, "source": self.source,
                "roofline_bandwidth": self.bandwidth_probe, "bytes_per_s_copy": self.copy_bytes_per_s,
                "bytes_per_s_read": self.read_bytes_per_s, "flops_per_s_by_dtype": dict(self.flops_per_s)}


def spec_peaks(device_name: str, dtypes: Iterable[str]) -> Peaks:
    for key, (flops, bw) in SPEC_TABLE.items():
        if key.lower() in device_name.lower():
            # Tensor-core rate for 16-bit types; fp32 without TF32 runs ~1/15 of it on Hopper.
            rates = {d: flops if d in ("bfloat16", "float16") else flops / 15 for d in dtypes}
            return Peaks(bw, rates, "spec", bandwidth_probe="spec")
    return Peaks()


def _median_ms(fn: Callable[[], object], device: torch.device, budget_s: float) -> float:
    settings = TimingSettings(budget_s=budget_s, warmup_s=budget_s / 4, min_samples=3, max_samples=200)
    samples = sorted(time_step(fn, device, settings).samples_ms)
    return samples[len(samples) // 2]


def probe_peaks(device: torch.device, dtypes: Iterable[str], budget_s: float = 0.3) -> Peaks:
    """Measure copy and read bandwidth and the matmul rate of each dtype on `device`."""
    with device_scope(device):
        return _probe(device, dtypes, budget_s)


def _probe(device: torch.device, dtypes: Iterable[str], budget_s: float) -> Peaks:
    gpu = device.type == "cuda"
    n_bytes = (1 << 30) if gpu else (256 << 20)  # far beyond L2 / LLC
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda src=src, dst=dst: dst.copy_(src), device, budget_s)
    copy_bw = 2 * n_bytes / (copy_ms * 1e-3)  # read + write
    del dst
    read_ms = _median_ms(lambda src=src: src.sum(), device, budget_s)
    read_bw = n_bytes / (read_ms * 1e-3)  # reads the buffer, writes one element
    del src
    rates = {}
    for name in dict.fromkeys(canonical_dtype(d) for d in dtypes):
        n = 8192 if gpu else (1024 if name in ("float32", "float64") else 512)
        a = torch.randn(n, n, device=device).to(torch_dtype(name))
        b = torch.randn(n, n, device=device).to(torch_dtype(name))
        mm_ms = _median_ms(lambda a=a, b=b: a @ b, device, budget_s)
        rates[name] = 2 * n**3 / (mm_ms * 1e-3)
    if gpu:
        torch.cuda.empty_cache()
    return Peaks(read_bw, rates, "probe", bandwidth_probe="read", copy_bytes_per_s=copy_bw,
                 read_bytes_per_s=read_bw)


def measure_peaks(device: torch.device, dtypes: list[str], probe: bool) -> Peaks:
    """The probed peaks of `device` when `probe`, else (or when the probe fails) the spec table's."""
    if probe:
        try:
            return probe_peaks(device, dtypes)
        except Exception:  # a failed probe must not cost the sweep; fall back to the spec table
            pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return spec_peaks(name, dtypes)


def roofline_pct(flops: float, n_bytes: float, latency_ms: float, peaks: Peaks, dtype: str) -> float | None:
    peak_flops = peaks.flops_for(dtype)
    if not peak_flops or not peaks.bytes_per_s or latency_ms <= 0:
        return None
    floor_s = max(flops / peak_flops, n_bytes / peaks.bytes_per_s)
    return 100.0 * floor_s / (latency_ms * 1e-3)
