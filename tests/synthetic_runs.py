"""Build realistic synthetic run directories (results.csv, samples.csv, meta.json) for tests.

The numbers follow a simple device model (decode is bandwidth-bound, prefill
compute-bound) so charts look like a real sweep, and raw samples are drawn
from a seeded lognormal around each case's latency so statistical tests know
the true answer. Used by the report and compare tests; imports no torch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mlabench import schema

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
PEAK_FLOPS = 989e12  # H100 SXM dense bf16
PEAK_BW = 3.35e12
BACKEND_EFFICIENCY = {"eager": 0.30, "compiled": 0.45, "sdpa": 0.55, "flashmla": 0.75}
OVERHEAD_MS = {"eager": 0.040, "compiled": 0.025, "sdpa": 0.020, "flashmla": 0.012}

# The main grid's model: DeepSeek-V2-Lite-like widths for every variant.
HIDDEN, HEADS, HEAD_DIM, ROPE = 2048, 16, 128, 64
VARIANT_DIMS: dict[str, dict[str, int]] = {
    "mha": dict(num_kv_heads=HEADS),
    "gqa": dict(num_kv_heads=4),
    "mqa": dict(num_kv_heads=1),
    "mla-absorbed": dict(num_kv_heads=HEADS, rope_head_dim=ROPE, v_head_dim=HEAD_DIM),
}


def kv_bytes(variant: str, dims: dict[str, Any], batch: int, seq_len: int, dtype: str) -> int:
    """One layer's cache for `batch` sequences of `seq_len` tokens."""
    eb = DTYPE_BYTES[dtype]
    if variant.startswith("mla"):
        per_token = dims["kv_lora_rank"] + dims["rope_head_dim"]
    elif variant == "dsa":  # the latent, and the indexer key in FP8 with one fp32 scale per 128 in every dtype
        d_i = dims["index_head_dim"]
        return batch * seq_len * ((dims["kv_lora_rank"] + dims["rope_head_dim"]) * eb + d_i + 4 * -(-d_i // 128))
    elif variant.startswith("tpa"):
        per_token = (dims["k_rank"] + dims["v_rank"]) * (dims["num_heads"] + dims["head_dim"])
    elif variant == "lowrank-kv":
        per_token = 2 * dims["num_kv_heads"] * dims["kv_lora_rank"]
    else:
        per_token = 2 * dims["num_kv_heads"] * dims["head_dim"]
    return batch * seq_len * per_token * eb


def attn_params(variant: str, dims: dict[str, Any], hidden: int) -> int:
    h, d, g = dims["num_heads"], dims["head_dim"], dims["num_kv_heads"]
    if variant.startswith("mla"):
        r, dr, dv = dims["kv_lora_rank"], dims["rope_head_dim"], dims["v_head_dim"]
        return hidden * h * (d + dr) + hidden * (r + dr) + r * h * (d + dv) + h * dv * hidden + r
    if variant == "lowrank-kv":
        r = dims["kv_lora_rank"]
        return 2 * hidden * h * d + 2 * hidden * g * r + 2 * g * r * d
    return 2 * hidden * h * d + 2 * hidden * g * d


def _key(suite: str, model: str, variant: str, backend: str, mode: str, dtype: str, device: str,
         batch: int, seq_len: int, dims: dict[str, Any]) -> dict[str, Any]:
    q_len = seq_len if mode == "prefill" else 1
    key: dict[str, Any] = dict(
        suite=suite, model=model, variant=variant, backend=backend, mode=mode, scope="step", dtype=dtype,
        device=device,
        batch=batch, seq_len=seq_len, q_len=q_len, num_heads=dims["num_heads"],
        num_kv_heads=dims["num_kv_heads"], head_dim=dims["head_dim"], q_lora_rank=dims.get("q_lora_rank", 0),
        kv_lora_rank=dims.get("kv_lora_rank", 0), rope_head_dim=dims.get("rope_head_dim", 0),
        v_head_dim=dims.get("v_head_dim", 0),
        **{f: dims.get(f, 0) for f in ("q_rank", "k_rank", "v_rank", "index_heads", "index_head_dim", "topk")},
    )
    key["case_id"] = schema.case_id(key)
    return key


def _measure(key: dict[str, Any], hidden: int, status: str, error: str, rng: np.random.Generator,
             noise: float, n_samples: int, factor: float) -> tuple[dict[str, Any], list[float]]:
    """Fill a row's measured columns and draw its raw samples."""
    dims = key
    b, s, q, h, d = key["batch"], key["seq_len"], key["q_len"], key["num_heads"], key["head_dim"]
    eb = DTYPE_BYTES[key["dtype"]]
    kv = kv_bytes(key["variant"], dims, b, s, key["dtype"])
    params = attn_params(key["variant"], dims, hidden)
    flops = 4 * b * h * q * s * d + 2 * b * q * params
    nbytes = kv + params * eb + 2 * b * q * hidden * eb
    row: dict[str, Any] = dict(key, status=status, error=error, flops=flops, bytes=nbytes,
                               kv_cache_bytes=kv, params=params)
    row["kv_cache_bytes_measured"] = kv if status not in ("skipped", "unsupported") else ""
    if key["device"].startswith("cuda") and status == "ok":
        blocks = -(-kv // (2 << 20)) * (2 << 20)
        row.update(kv_cache_bytes_allocator=blocks, kv_cache_bytes_nvml=blocks + (2 << 20),
                   peak_mem_bytes=blocks + params * eb * 2)
    if status != "ok":
        return row, []
    eff = BACKEND_EFFICIENCY[key["backend"]]
    seconds = max(flops / (PEAK_FLOPS * eff), nbytes / (PEAK_BW * eff))
    true_ms = (OVERHEAD_MS[key["backend"]] + 1e3 * seconds) * factor
    samples = np.exp(rng.normal(np.log(true_ms), noise, size=n_samples))
    med = float(np.median(samples))
    p10, p25, p75, p90 = np.percentile(samples, [10, 25, 75, 90])
    row.update(
        latency_ms=med, latency_ms_p10=p10, latency_ms_p90=p90, latency_ms_iqr=p75 - p25, n_samples=n_samples,
        compile_ms=4200.0 + 10 * s / 512 if key["backend"] == "compiled" else "",
        tokens_per_s=b * q / (med / 1e3), tflops=flops / (med / 1e3) / 1e12, gbps=nbytes / (med / 1e3) / 1e9,
        roofline_pct=100 * max(flops / PEAK_FLOPS, nbytes / PEAK_BW) / (med / 1e3),
        max_abs_err=2e-3, rel_err=4e-3, backend_detail=f"{key['backend']} (synthetic)", timer="cuda_event",
        wall_s=0.05 * n_samples * med,
    )
    return row, [float(x) for x in samples]


def _outcome(variant: str, backend: str, mode: str, batch: int, seq_len: int, failures: bool) -> tuple[str, str]:
    if backend == "flashmla" and not variant.startswith("mla"):
        return "unsupported", "flashmla implements MLA only"
    if backend == "flashmla" and mode == "prefill":
        return "unsupported", "flashmla has no prefill kernel"
    if backend == "flashinfer":
        return "skipped", "flashinfer is not installed (pip install flashinfer-python)"
    if not failures:
        return "ok", ""
    if (variant, backend, mode, batch, seq_len) == ("mha", "eager", "prefill", 8, 4096):
        return "oom", "CUDA out of memory. Tried to allocate 8.00 GiB"
    if (variant, backend, mode, batch, seq_len) == ("gqa", "compiled", "decode", 8, 512):
        return "error", "InductorError: <lowering failed> & retried"
    if (variant, backend, mode, batch, seq_len) == ("mqa", "compiled", "prefill", 1, 1024):
        return "inaccurate", "rel_err 2.1e-01 > tolerance 2.0e-02"
    return "ok", ""


def claims_cases(device: str) -> Iterable[tuple[dict[str, Any], int]]:
    """(key, hidden) of the rows the `claims` suite produces (mlabench/claims.py: claims A-G)."""
    ds = dict(num_heads=128, head_dim=128)
    for variant, extra in (
        ("mha", dict(num_kv_heads=128)),
        ("gqa", dict(num_kv_heads=8)),
        ("mqa", dict(num_kv_heads=1)),
        ("mla-absorbed", dict(num_kv_heads=128, q_lora_rank=1536, kv_lora_rank=512, rope_head_dim=64,
                              v_head_dim=128)),
    ):
        yield _key("claims", "deepseek-v2", variant, "eager", "decode", "bfloat16", device, 1, 4096,
                   dict(ds, **extra)), 5120
    ll = dict(num_heads=32, num_kv_heads=32, head_dim=128)
    for variant, extra in (("mha", {}), ("lowrank-kv", dict(kv_lora_rank=32))):
        yield _key("claims", "llama-3-8b", variant, "eager", "decode", "float16", device, 1, 2048,
                   dict(ll, **extra)), 4096
    for variant, g in (("mha", 8), ("mqa", 1), ("gqa", 4)):
        yield _key("claims", "tiny", variant, "eager", "decode", "float32", device, 1, 128,
                   dict(num_heads=8, num_kv_heads=g, head_dim=32)), 256
    yield _key("claims", "t6-medium", "tpa", "eager", "decode", "bfloat16", device, 1, 256,
               dict(num_heads=47, num_kv_heads=47, head_dim=64, q_rank=6, k_rank=2, v_rank=2)), 1024
    v32 = dict(num_heads=128, num_kv_heads=1, head_dim=128, q_lora_rank=1536, kv_lora_rank=512, rope_head_dim=64,
               v_head_dim=128)
    indexer = dict(index_heads=64, index_head_dim=128, topk=2048)  # what only dsa reads (config.OPTIONAL_FIELDS)
    for variant, extra in (("dsa", indexer), ("mla-absorbed", {})):
        yield _key("claims", "deepseek-v3.2", variant, "eager", "decode", "bfloat16", device, 1, 1024,
                   dict(v32, **extra)), 7168


def build_rows(
    *,
    seed: int = 0,
    suite: str = "decode",
    model: str = "deepseek-v2-lite",
    variants: Iterable[str] = ("mha", "gqa", "mqa", "mla-absorbed"),
    backends: Iterable[str] = ("eager", "compiled", "flashmla"),
    modes: Iterable[str] = ("prefill", "decode"),
    seq_lens: Iterable[int] = (512, 1024, 2048, 4096),
    batches: Iterable[int] = (1, 8),
    ranks: Iterable[int] = (128, 256, 512),
    dtype: str = "bfloat16",
    device: str = "cuda:0",
    noise: float = 0.03,
    n_samples: int = 30,
    failures: bool = True,
    claims: bool = True,
    slowdown: float = 1.0,
    slow: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and long-format samples for a grid; `slowdown` multiplies the cases `slow` selects (all if None)."""
    rng = np.random.default_rng(seed)
    cases: list[tuple[dict[str, Any], int]] = []
    for variant in variants:
        for rank in ranks if variant.startswith("mla") else (0,):
            dims = dict(num_heads=HEADS, head_dim=HEAD_DIM, **VARIANT_DIMS[variant])
            if rank:
                dims["kv_lora_rank"] = rank
            for backend in backends:
                # flashmla only runs MLA decode: its other cells become one unsupported row each.
                fused_only = backend == "flashmla" and not (variant.startswith("mla") and rank == max(ranks))
                for mode in modes:
                    if backend == "flashmla" and mode == "prefill" and not fused_only:
                        continue
                    for batch in batches:
                        for s in seq_lens:
                            if fused_only and (not failures or (batch, s) != (min(batches), min(seq_lens))):
                                continue
                            cases.append((_key(suite, model, variant, backend, mode, dtype, device, batch, s, dims),
                                          HIDDEN))
    if failures and "mha" in variants and "decode" in modes:
        dims = dict(num_heads=HEADS, head_dim=HEAD_DIM, **VARIANT_DIMS["mha"])
        cases.append((_key(suite, model, "mha", "flashinfer", "decode", dtype, device, min(batches), min(seq_lens),
                            dims), HIDDEN))
    if claims:
        cases.extend(claims_cases(device))
    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for key, hidden in cases:
        status, error = _outcome(key["variant"], key["backend"], key["mode"], key["batch"], key["seq_len"],
                                 failures and key["suite"] != "claims")
        factor = slowdown if (slow is None or slow(key)) else 1.0
        row, draws = _measure(key, hidden, status, error, rng, noise, n_samples, factor)
        rows.append(row)
        samples.extend({"case_id": key["case_id"], "sample": i, "latency_ms": x} for i, x in enumerate(draws))
    return rows, samples


def make_meta(*, suite: str = "decode", device_name: str = "NVIDIA H100 80GB HBM3", torch_version: str = "2.5.1",
              peaks: bool = True, device_type: str = "cuda") -> dict[str, Any]:
    return {
        "mlabench_version": "0.1.0",
        "created_utc": "2025-01-01T00:00:00Z",
        "command": f"mlabench sweep --suite {suite} --device cuda:0 --out results/runs/ci",
        "suite": suite,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "python": "3.11.9",
        "platform": "Linux-6.8.0-x86_64",
        "torch": torch_version,
        "triton": "3.1.0" if device_type == "cuda" else None,
        "device": {
            "type": device_type, "name": device_name, "driver": "550.54.15" if device_type == "cuda" else None,
            "cuda": "12.4" if device_type == "cuda" else None, "capability": "9.0" if device_type == "cuda" else None,
            "memory_bytes": 85_045_624_832 if device_type == "cuda" else None,
        },
        "cpu": {"model": "AMD EPYC 9454 48-Core Processor", "threads": 16},
        "peaks": (
            {"flops_per_s": PEAK_FLOPS * 0.8, "bytes_per_s": PEAK_BW * 0.9, "source": "probe"}
            if peaks else {"flops_per_s": None, "bytes_per_s": None, "source": "none"}
        ),
        "settings": {"warmup": 10, "samples": 30, "flush_l2": True},
    }


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_run(path: Path, rows: list[dict[str, Any]], samples: list[dict[str, Any]] | None,
              meta: dict[str, Any] | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_csv(path / schema.RESULTS_CSV, schema.COLUMNS, rows)
    if samples is not None:
        write_csv(path / schema.SAMPLES_CSV, schema.SAMPLE_COLUMNS, samples)
    if meta is not None:
        (path / schema.META_JSON).write_text(json.dumps(meta, indent=2))
    return path


def make_run(path: Path, *, meta: dict[str, Any] | None = None, samples: bool = True, **grid: Any) -> Path:
    """A complete run directory; keyword arguments go to `build_rows` (and `suite` to the meta)."""
    rows, draws = build_rows(**grid)
    meta = meta if meta is not None else make_meta(suite=grid.get("suite", "decode"))
    return write_run(path, rows, draws if samples else None, meta)


def make_single_point_run(path: Path) -> Path:
    """One case: one variant, backend, mode, batch and seq_len."""
    return make_run(path, variants=("mha",), backends=("eager",), modes=("decode",), seq_lens=(1024,),
                    batches=(1,), failures=False, claims=False)


def make_empty_run(path: Path) -> Path:
    """A run whose results.csv has the header and no rows (meta present)."""
    return write_run(path, [], [], make_meta())


def round_medians(rng: np.random.Generator, factors: np.ndarray, *, rounds: int = 10, samples: int = 10,
                  sample_noise: float = 0.05, round_noise: float = 0.02, job: np.ndarray | None = None,
                  heavy: bool = False) -> np.ndarray:
    """Per-round medians, shape (trials, cases, rounds), of cases whose true latency is `factors` (trials, cases).

    Each round shifts every case on its own (lognormal sigma `round_noise`, or a
    Student t with 3 degrees of freedom of the same scale when `heavy`: the odd
    round 2-3x off), on top of independent sample noise; `job` multiplies whole
    cases (a per-job shift shared by both sides of one job).
    """
    shape = (*factors.shape, rounds)
    shift = rng.standard_t(3, size=shape) * round_noise if heavy else rng.normal(0.0, round_noise, size=shape)
    draws = np.exp(rng.normal(0.0, sample_noise, size=(*shape, samples)))
    scale = factors if job is None else factors * job
    return np.median(draws, axis=-1) * np.exp(shift) * scale[..., None]


def make_rounds_run(path: Path, *, rounds: int, seed: int, slowdown: float = 1.0,
                    slow: Callable[[dict[str, Any]], bool] | None = None, round_noise: float = 0.02,
                    ab_job: str | None = None, **grid: Any) -> Path:
    """A run directory whose samples come in `rounds` rounds, each round shifting every case on its own."""
    rows, _ = build_rows(seed=seed, slowdown=slowdown, slow=slow, **grid)
    rng = np.random.default_rng(seed + 1000)
    n = int(grid.get("n_samples", 30))
    noise = float(grid.get("noise", 0.03))
    samples = []
    for row in rows:
        if row["status"] != "ok":
            continue
        for r in range(rounds):
            level = float(row["latency_ms"]) * np.exp(rng.normal(0.0, round_noise))
            for i, x in enumerate(level * np.exp(rng.normal(0.0, noise, size=n))):
                samples.append({"case_id": row["case_id"], "sample": i, "latency_ms": float(x), "round": r})
    meta = make_meta(suite=grid.get("suite", "decode"))
    meta["rounds"] = rounds
    if ab_job:
        meta["ab"] = {"job": ab_job, "rounds": rounds}
    return write_run(path, rows, samples, meta)
