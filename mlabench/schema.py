"""The results contract: run-directory file names, CSV columns, row statuses, case ids.

Everything that reads or writes a run directory (sweep, merge, report, compare)
takes its names from here. This module imports no torch, so reports and the
regression gate stay light.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

RESULTS_CSV = "results.csv"
SAMPLES_CSV = "samples.csv"  # long format: case_id, sample, latency_ms, round
META_JSON = "meta.json"
REPORT_HTML = "report.html"

# The identity of a case. Resume, merge and compare join on these columns.
KEY_COLUMNS: tuple[str, ...] = (
    "suite",
    "model",
    "variant",
    "backend",
    "mode",
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
    "peak_mem_bytes",
    "params",
)
ACCURACY_COLUMNS: tuple[str, ...] = ("max_abs_err", "rel_err")
# Columns beyond the documented contract: how the case was run.
EXTRA_COLUMNS: tuple[str, ...] = ("case_id", "backend_detail", "timer", "wall_s")

COLUMNS: tuple[str, ...] = (
    KEY_COLUMNS
    + OUTCOME_COLUMNS
    + TIME_COLUMNS
    + WORK_COLUMNS
    + MEMORY_COLUMNS
    + ACCURACY_COLUMNS
    + EXTRA_COLUMNS
)

# `round`: which pass over the case list (sweep --rounds) took the sample; files
# written before rounds existed have no such column and read as round 0.
SAMPLE_COLUMNS: tuple[str, ...] = ("case_id", "sample", "latency_ms", "round")

STATUSES: tuple[str, ...] = ("ok", "oom", "error", "skipped", "unsupported", "inaccurate")
FAILED_STATUSES: frozenset[str] = frozenset({"oom", "error", "inaccurate"})

# Deterministic metrics: equal code on equal shapes must give equal values.
EXACT_COLUMNS: tuple[str, ...] = ("kv_cache_bytes", "kv_cache_bytes_measured", "params", "flops", "bytes")


def case_id(key: Mapping[str, Any]) -> str:
    """A short stable hash of a case's key columns (same key -> same id, on any machine)."""
    canonical = json.dumps([str(key[c]) for c in KEY_COLUMNS], separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]
