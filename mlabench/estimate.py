"""How long a sweep will take, before it runs: `mlabench sweep --dry-run`.

An estimate, never a measurement. Per case it adds:
- a fixed setup (weights built, cache allocated, backend prepared, first call), plus the
  cache fill (`FILL_BYTES_PER_ELEMENT` of device traffic per cached element);
- one-off compile/JIT time by backend (`COMPILE_S`; inductor and FlashInfer dominate);
- the float64 accuracy reference (the first and last sequences of the step, at the device's
  float64 rate and bandwidth, each element 8 bytes);
- warm-up plus sampling: `max(budget_s, min_samples * step)` seconds, where one step lasts
  its roofline floor `max(flops / peak_flops, bytes / peak_bw)` from the analytic model
  and the peaks (spec sheet for a GPU, a nominal figure for a CPU), stretched by
  `FLOOR_EFFICIENCY` because real steps reach a fraction of the floor.
With `rounds` R every round repeats the setup, cache fill, warm-up and sampling (R times);
the compile and the accuracy reference are paid once, as the sweep pays them.
The sweep itself adds `SWEEP_FIXED_S` (start-up, peak probes); a backend that cannot run on
the planned device costs nothing (`unavailable`: it is recorded as skipped at once).
CUDA-graph timing adds one capture per case (a few tens of ms), so both timing modes get the
same estimate to within a percent or two; `GRAPH_CAPTURE_S` covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlabench import analytic
from mlabench.case import Case
from mlabench.measure.accuracy import reference_rows
from mlabench.measure.peaks import SPEC_TABLE
from mlabench.settings import SweepSettings

DEFAULT_GPU = "H100 SXM"  # assumed when sizing a GPU run on a machine without one
SETUP_S = {"cuda": 1.0, "cpu": 0.3}
COMPILE_S: dict[str, dict[str, float]] = {  # backend -> device type -> seconds of compile/JIT per case
    "compiled": {"cuda": 20.0, "cpu": 30.0},
    "triton": {"cuda": 1.5, "cpu": 0.0},
    "flashinfer": {"cuda": 3.0, "cpu": 0.0},
    "flashmla": {"cuda": 0.3, "cpu": 0.0},
}
CPU_PEAKS = (2e11, 2e10)  # (FLOP/s, bytes/s): a nominal multi-core host, for a rough figure only
FP64_FRACTION = {"cuda": 1 / 16, "cpu": 1 / 2}  # float64 rate as a share of the 16-bit/float32 peak
FLOOR_EFFICIENCY = 0.3  # a step takes about floor / 0.3 (launch-bound small steps, unfused eager)
GRAPH_CAPTURE_S = 0.05
SWEEP_FIXED_S = 10.0  # process start, imports, bandwidth and matmul probes
SKIPPED_CASE_S = 0.01
TP_GROUP_START_S = 10.0
FILL_BYTES_PER_ELEMENT = 200  # random_fill: about a dozen int64 element-wise passes per element


@dataclass
class Estimate:
    cases: int
    seconds: float
    device: str  # the device the figures assume, e.g. "H100 SXM (spec peaks)"
    by_backend: dict[str, float] = field(default_factory=dict)  # seconds per backend
    rounds: int = 1  # passes over the case list (sweep --rounds)
    # Seconds times the devices each case holds: a tp = N case holds N (GPUs, or CPU processes) at once.
    device_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "rounds": self.rounds, "estimated_s": round(self.seconds, 1),
                "assumes": self.device, "estimated_device_s": round(self.device_seconds, 1),
                "estimated_s_by_backend": {k: round(v, 1) for k, v in self.by_backend.items()},
                "note": "an estimate from analytic bytes/FLOPs, peaks and fixed per-case overhead, not a measurement"}


def peaks_for(device_type: str, device_name: str | None) -> tuple[float, float, str]:
    """(16-bit FLOP/s, bytes/s, description) the estimate assumes."""
    if device_type != "cuda":
        return CPU_PEAKS[0], CPU_PEAKS[1], "a nominal CPU host"
    name = device_name or DEFAULT_GPU
    for key, (flops, bw) in SPEC_TABLE.items():
        if key.lower() in name.lower():
            return flops, bw, f"{name} (spec peaks)"
    flops, bw = SPEC_TABLE[DEFAULT_GPU]
    return flops, bw, f"{DEFAULT_GPU} spec peaks (no entry for {name})"


def case_seconds(case: Case, settings: SweepSettings, flops_per_s: float, bytes_per_s: float,
                 device_type: str) -> float:
    """Estimated wall seconds of one case."""
    sh, step = case.shape, case.step
    rate = flops_per_s if case.dtype in ("bfloat16", "float16") or device_type == "cpu" else flops_per_s / 15
    flops = analytic.scoped_flops(case.variant, sh, step, case.scope)
    moved = analytic.scoped_bytes(case.variant, sh, step, case.scope)
    call_s = max(flops / rate, moved / bytes_per_s) / FLOOR_EFFICIENCY
    once = COMPILE_S.get(case.backend, {}).get(device_type, 0.0)
    per_round = SETUP_S[device_type] + call_s
    cached = analytic.kv_cache_elements(case.variant, sh, case.batch, step.context) if step.context else 0
    per_round += cached * FILL_BYTES_PER_ELEMENT / bytes_per_s
    if settings.accuracy:
        share = len(reference_rows(case.batch)) / case.batch
        ref_flops = analytic.flops(case.variant, sh, step) * share
        ref_bytes = analytic.bytes_moved(case.variant, sh, step) * share * 8 / sh.element_bytes
        once += max(ref_flops / (flops_per_s * FP64_FRACTION[device_type]), ref_bytes / bytes_per_s)
    sampling = max(settings.budget_s, settings.min_samples * call_s)
    per_round += settings.warmup_s + sampling
    if device_type == "cuda" and settings.cuda_graph:
        per_round += GRAPH_CAPTURE_S
    return once + per_round * settings.rounds


def estimate_sweep(cases: list[Case], settings: SweepSettings, device_type: str,
                   device_name: str | None = None, unavailable: frozenset[str] = frozenset()) -> Estimate:
    """`unavailable`: backends that will be skipped on the planned device."""
    flops_per_s, bytes_per_s, assumed = peaks_for(device_type, device_name)
    by_backend: dict[str, float] = {}
    device_seconds = 0.0
    for case in cases:
        if case.backend in unavailable:
            seconds = SKIPPED_CASE_S
        else:
            seconds = case_seconds(case, settings, flops_per_s, bytes_per_s, device_type)
        by_backend[case.backend] = by_backend.get(case.backend, 0.0) + seconds
        device_seconds += seconds * case.tp
    # Each tensor-parallel degree starts its group of ranks once (N interpreters importing torch).
    groups = len({c.tp for c in cases if c.tp > 1}) * TP_GROUP_START_S
    return Estimate(len(cases), SWEEP_FIXED_S + groups + sum(by_backend.values()), assumed, by_backend,
                    settings.rounds, device_seconds)
