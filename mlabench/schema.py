"""The results contract: run-directory file names, CSV columns, row statuses, case ids.

Everything that reads or writes a run directory (sweep, merge, report, compare)
takes its names from here. This module imports no torch, so reports and the
regression gate stay light.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

RESULTS_CSV = "results.csv"
SAMPLES_CSV = "samples.csv"  # long format: case_id, sample, latency_ms
META_JSON = "meta.json"
REPORT_HTML = "report.html"

# The identity of a case. Resume, merge and compare join on these columns.
KEY_COLUMNS: tuple[str, ...] = (
    "suite",
    "model",
    "variant",
    "backend",
    "mode",
    "scope",
    "dtype",
    "device",
    "batch",
    "seq_len",
    "q_len",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "q_lora_rank",
    "kv_lora_rank",
    "rope_head_dim",
    "v_head_dim",
    # The rest of the shape: every field that changes the computation is part of the identity.
    "hidden_size",
    "num_layers",
    "rope_theta",
    "rope_scaling_factor",
    "rope_mscale_all_dim",
    "rope_original_max_position",
    "rope_beta_fast",
    "rope_beta_slow",
    "rms_norm_eps",
    # Backend options that apply to this case's backend, canonical "name=value;..." ('' for none).
    "options",
)

OUTCOME_COLUMNS: tuple[str, ...] = ("status", "error")
TIME_COLUMNS: tuple[str, ...] = (
    "latency_ms",
    "latency_ms_p10",
    "latency_ms_p90",
    "latency_ms_iqr",
    "n_samples",
    "compile_ms",
    "tokens_per_s",
)
WORK_COLUMNS: tuple[str, ...] = ("flops", "bytes", "tflops", "gbps", "roofline_pct")
MEMORY_COLUMNS: tuple[str, ...] = (
    "kv_cache_bytes",
    "kv_cache_bytes_measured",
    "kv_cache_bytes_allocator",
    "kv_cache_bytes_nvml",
    "backend_cache_bytes",
    "peak_mem_bytes",
    "params",
)
ACCURACY_COLUMNS: tuple[str, ...] = ("max_abs_err", "rel_err", "cos_diff")
# Columns beyond the documented contract: how the case was run. `sample_calls`: calls
# averaged into one sample (CUDA-graph replays, CPU blocks); `fits_l2`: on hot (graph) rows,
# whether the case's bytes fit in the GPU's L2, where gbps may exceed the HBM roofline.
EXTRA_COLUMNS: tuple[str, ...] = ("case_id", "backend_detail", "timer", "sample_calls", "fits_l2", "threads",
                                  "unstable", "wall_s")

COLUMNS: tuple[str, ...] = (
    KEY_COLUMNS
    + OUTCOME_COLUMNS
    + TIME_COLUMNS
    + WORK_COLUMNS
    + MEMORY_COLUMNS
    + ACCURACY_COLUMNS
    + EXTRA_COLUMNS
)

SAMPLE_COLUMNS: tuple[str, ...] = ("case_id", "sample", "latency_ms")

STATUSES: tuple[str, ...] = ("ok", "oom", "error", "skipped", "unsupported", "inaccurate", "timeout")
FAILED_STATUSES: frozenset[str] = frozenset({"oom", "error", "inaccurate", "timeout"})

# Deterministic metrics: equal code on equal shapes must give equal values.
EXACT_COLUMNS: tuple[str, ...] = ("kv_cache_bytes", "kv_cache_bytes_measured", "params", "flops", "bytes")


def normalize_key_value(value: Any) -> str:
    """The text form of a key value: 128, 128.0 and '128.0' are one key; None and NaN are ''.

    Case ids are computed from this form both when a case is built and when a results.csv
    is read back, so a value that went through CSV text hashes as it did in memory."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if number == int(number):
        return str(int(number))
    return repr(number)  # shortest text that round-trips: '1e-06', '0.707'
# Timing modes, named by the first word of the `timer` column. Runs timed in different
# modes (cold events, graph replay, CPU blocks) measure different things.
TIMING_MODES: tuple[str, ...] = ("cuda-graph", "cuda-cold", "cpu")


def timing_mode(timer: str) -> str:
    """'cuda-graph ...' -> 'cuda-graph'; rows written before the mode word: 'cuda-events, ...' -> 'cuda-cold'."""
    text = str(timer).strip()
    if text.startswith("cuda-graph"):
        return "cuda-graph"
    if text.startswith(("cuda-cold", "cuda-events")):
        return "cuda-cold"
    if text.startswith("cpu"):
        return "cpu"
    return text.split(" ")[0] if text else ""


def case_id(key: Mapping[str, Any]) -> str:
    """A short stable hash of a case's key columns (same key -> same id, on any machine)."""
    canonical = json.dumps([normalize_key_value(key.get(c)) for c in KEY_COLUMNS], separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]
