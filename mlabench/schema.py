"""The results contract: run-directory file names, the typed results row, statuses, case ids.

Everything that reads or writes a run directory (sweep, merge, report, compare)
takes its names from here. This module imports no torch, so reports and the
regression gate stay light.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from mlabench.config import SHAPE_FIELDS

RESULTS_CSV = "results.csv"
SAMPLES_CSV = "samples.csv"  # long format: case_id, sample, latency_ms, round
META_JSON = "meta.json"
ROUNDS_JSONL = "rounds.jsonl"  # sweep --rounds: each finished round of a case, its row as one JSON line
REPORT_HTML = "report.html"

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


def finite_number(value: Any) -> float | None:
    """A results cell as a number: None for a blank, text, NaN or an infinity (a row that failed,
    or a column its case does not fill), so arithmetic on it never spreads a NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _column(group: str, key: bool = False, *, absent: str | None = None, id_default: str | None = None) -> Any:
    """A results.csv column: its group in the contract, and whether it is part of the case key.

    `absent`: a key column added after runs were on disk reads as this where a file lacks it.
    `id_default`: a key column hashed into the case id only when its value differs from this,
    so the cases written before the column existed keep their ids."""
    meta = {"group": group, "key": key, "absent": absent, "id_default": id_default}
    return field(metadata=meta) if key else field(default=None, metadata=meta)


def _shape_column(f: Any) -> Any:
    """The key column of a shape field (config.shape_field): its default is what a results.csv
    written before the field existed holds, and new fields leave earlier case ids alone."""
    default = normalize_key_value(f.default)
    return _column("key", key=True, absent=default if f.metadata["backfill"] else None,
                   id_default=default if f.metadata["id_if_set"] else None)


@dataclass(frozen=True)
class _CaseColumns:
    """The first key columns of a row: the case as the grid names it. The shape's key columns
    (config.AttentionShape's, in their order) follow, then `_RowColumns`."""

    # The identity of a case (resume, merge and compare join on these): every field that
    # changes the computation.
    suite: str = _column("key", key=True)
    model: str = _column("key", key=True)
    variant: str = _column("key", key=True)
    backend: str = _column("key", key=True)
    mode: str = _column("key", key=True)
    scope: str = _column("key", key=True, absent="step")
    dtype: str = _column("key", key=True)
    # What the KV cache stores: the compute dtype's name, or fp8_e4m3 / fp8_e5m2. Runs written
    # before the column read as their dtype (case_id below hashes it only when it differs).
    kv_dtype: str = _column("key", key=True)
    device: str = _column("key", key=True)
    batch: int = _column("key", key=True)
    seq_len: int = _column("key", key=True)
    q_len: int = _column("key", key=True)
@dataclass(frozen=True)
class _RowColumns:
    """The key columns after the shape's, then the outcome and every measurement."""

    options: str = _column("key", key=True)  # this backend's options, "name=value;..." ('' for none)
    # Serving axes ('' = the idealised case, which is how runs written before them read):
    # `context` the ragged-length spec (seq_len is then its longest sequence), `cache_layout`
    # 'paged:PAGE_SIZE' for a paged cache.
    context: str = _column("key", key=True, absent="", id_default="")
    cache_layout: str = _column("key", key=True, absent="", id_default="")
    # Tensor parallelism: `tp` ranks each hold their shard of the layer (1 = unsharded, how runs
    # written before the axis read), joined by the torch.distributed backend `dist_backend`
    # (gloo on the CPU, nccl on CUDA; '' at tp 1).
    tp: int = _column("key", key=True, absent="1", id_default="1")
    dist_backend: str = _column("key", key=True, absent="", id_default="")
    # Outcome
    status: str = _column("outcome", key=True)  # required like a key field, though not part of the key
    error: str | None = _column("outcome")
    # Time
    latency_ms: float | None = _column("time")  # median
    latency_ms_p10: float | None = _column("time")
    latency_ms_p90: float | None = _column("time")
    latency_ms_iqr: float | None = _column("time")
    n_samples: int | None = _column("time")
    compile_ms: float | None = _column("time")
    # Tensor-parallel cases: the all-reduce of one step's output alone (median, slowest rank) and its
    # share of the step's median latency
    comm_ms: float | None = _column("time")
    comm_share: float | None = _column("time")
    tokens_per_s: float | None = _column("time")
    # Work
    flops: int | None = _column("work")
    bytes: int | None = _column("work")
    tflops: float | None = _column("work")
    gbps: float | None = _column("work")
    roofline_pct: float | None = _column("work")
    # Memory
    kv_cache_bytes: int | None = _column("memory")  # analytic
    kv_cache_bytes_per_gpu: int | None = _column("memory")  # analytic, one GPU's share at degree tp
    # nbytes of one rank's cache tensors (the largest rank's) in a tensor-parallel case; an ok row's
    # equals kv_cache_bytes_per_gpu
    kv_cache_bytes_per_gpu_measured: int | None = _column("memory")
    kv_cache_bytes_measured: int | None = _column("memory")  # nbytes of the cache tensors
    kv_cache_bytes_allocator: int | None = _column("memory")
    kv_cache_bytes_nvml: int | None = _column("memory")
    backend_cache_bytes: int | None = _column("memory")  # a second copy a backend keeps (paged pool)
    peak_mem_bytes: int | None = _column("memory")
    params: int | None = _column("memory")  # counted on the module
    # Accuracy (element-wise vs the float64 reference, first and last sequence)
    max_abs_err: float | None = _column("accuracy")
    rel_err: float | None = _column("accuracy")
    cos_diff: float | None = _column("accuracy")
    # FP8 caches: the error the quantization alone causes, measured as rel_err is, of the float64
    # reference run on the dequantized cache against the float64 reference on the unquantized one
    # (empty when the cache is not quantized; see measure/accuracy.py for the tolerance it sets).
    quant_err: float | None = _column("accuracy")
    # How the case was run. `sample_calls`: calls averaged into one sample (CUDA-graph replays,
    # CPU blocks); `fits_l2`: on hot (graph) rows, whether the case's bytes fit in the GPU's L2,
    # where gbps may exceed the HBM roofline. `host` and `device_name`: where the case ran (the
    # machine, and the GPU or CPU model), since a sweep spread over a cluster may land cases on
    # different machines and device kinds.
    case_id: str | None = _column("extra")
    backend_detail: str | None = _column("extra")
    timer: str | None = _column("extra")
    sample_calls: int | None = _column("extra")
    fits_l2: bool | None = _column("extra")
    threads: int | None = _column("extra")
    unstable: int | None = _column("extra")  # 1 when p90/p10 > 1.5
    # 1 when the case was profiled (--profile, --nvtx): its samples precede its trace, but NVTX
    # ranges wrap its timed calls, and compare refuses to gate profiled against unprofiled rows.
    profiled: int | None = _column("extra")
    wall_s: float | None = _column("extra")
    host: str | None = _column("extra")
    device_name: str | None = _column("extra")
    # Context per sequence after the step (ragged batches differ; uniform ones are all seq_len).
    context_min: int | None = _column("extra")
    context_mean: float | None = _column("extra")
    context_max: int | None = _column("extra")
    context_lengths: str | None = _column("extra")  # a ragged case's lengths, "L1/L2/..." in batch order


class _RowAccess:
    """How a row is read: by column name, missing values as a default."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Any:
        """A row from a column -> value mapping; a name outside the schema is an error, not a
        column silently dropped."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        return cls(**values)

    def get(self, column: str, default: Any = None) -> Any:
        value = getattr(self, column)
        return default if value is None else value

    def __getitem__(self, column: str) -> Any:
        return getattr(self, column)

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def _fresh(f: Any) -> Any:
    return field(metadata=f.metadata) if f.default is MISSING else field(default=f.default, metadata=f.metadata)


# One row of results.csv. Its fields, in this order, ARE the CSV's columns: the writer iterates
# them and every column tuple below is derived from them.
ResultRow = make_dataclass(
    "ResultRow",
    [(f.name, f.type, _fresh(f)) for f in fields(_CaseColumns)]
    + [(f.name, f.type, _shape_column(f)) for f in SHAPE_FIELDS if f.metadata["key"]]
    + [(f.name, f.type, _fresh(f)) for f in fields(_RowColumns)],
    bases=(_RowAccess,), frozen=True,
)
ResultRow.__module__ = __name__  # pickled rows (isolated and Ray cases) name it where it lives
ResultRow.__doc__ = "One row of results.csv: the case's key columns, the shape's, the outcome and the measurements."


def _columns(group: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(ResultRow) if f.metadata["group"] == group)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))
KEY_COLUMNS: tuple[str, ...] = _columns("key")
OUTCOME_COLUMNS: tuple[str, ...] = _columns("outcome")
TIME_COLUMNS: tuple[str, ...] = _columns("time")
WORK_COLUMNS: tuple[str, ...] = _columns("work")
MEMORY_COLUMNS: tuple[str, ...] = _columns("memory")
ACCURACY_COLUMNS: tuple[str, ...] = _columns("accuracy")
EXTRA_COLUMNS: tuple[str, ...] = _columns("extra")

# `round`: which pass over the case list (sweep --rounds) took the sample; files
# written before rounds existed have no such column and read as round 0.
SAMPLE_COLUMNS: tuple[str, ...] = ("case_id", "sample", "latency_ms", "round")

# Key columns added after runs were on disk: what a file without the column holds (rundir.read).
KEY_DEFAULTS: dict[str, str] = {f.name: f.metadata["absent"] for f in fields(ResultRow)
                                if f.metadata["absent"] is not None}
# Key columns hashed into the case id only when they differ from this value (see case_id).
ID_DEFAULTS: dict[str, str] = {f.name: f.metadata["id_default"] for f in fields(ResultRow)
                               if f.metadata["id_default"] is not None}

STATUSES: tuple[str, ...] = ("ok", "oom", "error", "skipped", "unsupported", "inaccurate", "timeout")
FAILED_STATUSES: frozenset[str] = frozenset({"oom", "error", "inaccurate", "timeout"})

# Deterministic metrics: equal code on equal shapes must give equal values.
EXACT_COLUMNS: tuple[str, ...] = ("kv_cache_bytes", "kv_cache_bytes_measured", "kv_cache_bytes_per_gpu_measured",
                                  "params", "flops", "bytes")


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


def sdpa_math(backend_detail: str | None) -> bool:
    """True when a row's SDPA call ran PyTorch's unfused math kernel ('sdpa:auto->math' when the
    dispatcher fell back to it, 'sdpa:math' when asked): correct, but not a fused kernel's speed,
    so tables and the report mark such rows where a reader looks, not only in backend_detail."""
    return str(backend_detail or "").split(",")[0] in ("sdpa:auto->math", "sdpa:math")


# Key columns added after runs were on disk, hashed only when they differ from the value those
# runs implicitly had (another key column's), so every earlier case keeps its id.
KEY_DEFAULT_FROM: dict[str, str] = {"kv_dtype": "dtype"}


def case_id(key: Mapping[str, Any]) -> str:
    """A short stable hash of a case's key columns (same key -> same id, on any machine)."""
    values = {c: normalize_key_value(key.get(c)) for c in KEY_COLUMNS}
    for column, default_from in KEY_DEFAULT_FROM.items():
        if values[column] in ("", values[default_from]):
            del values[column]
    # Key columns added after runs were measured leave the id of every case at their default
    # unchanged, so runs and baselines measured before them still join and resume.
    # (An empty cell is a value never recorded: the default too.)
    for column, default in ID_DEFAULTS.items():
        if values[column] in ("", default):
            del values[column]
    canonical = json.dumps(list(values.values()), separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]
