"""One screen on what a GPU window measured (benchmarks/gpu_window.sh calls it after every step).

    python benchmarks/gpu_window_summary.py WORK OUT DEVICE > OUT/summary.txt

Reads the window's step log (WORK/steps.tsv), OUT/env.json and OUT/pytest.txt, and the
results.csv of every run directory under WORK/runs; writes OUT/memory.csv (step 5: the four
KV-cache byte columns side by side) and prints the summary. Pandas only: no torch, no GPU.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

WIDTH = 100


def runs(work: Path) -> dict[str, pd.DataFrame]:
    """Run name -> its rows (a run cut before its first row has none and is left out)."""
    found = {}
    for csv in sorted((work / "runs").glob("*/results.csv")):
        try:
            rows = pd.read_csv(csv, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            continue  # a torn file mid-write: the next summary reads it whole
        if not rows.empty:
            found[csv.parent.name] = rows
    return found


def env_line(out: Path) -> str:
    try:
        env = json.loads((out / "env.json").read_text())
    except (OSError, ValueError):
        return "env: not recorded"
    device = env.get("device") or {}
    peaks = env.get("peaks") or {}
    bw = peaks.get("bytes_per_s")
    return (f"device: {device.get('name', '?')} ({device.get('type', '?')}), torch {env.get('torch', '?')}, "
            f"triton {env.get('triton', '?')}" + (f", read {float(bw) / 1e9:.0f} GB/s" if bw else ""))


def steps(work: Path) -> list[str]:
    path = work / "steps.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return [f"  {parts[0]:<36} {parts[1]:<18} {parts[2]:>5} s" for parts in (line.split("\t") for line in lines)]


def tests(out: Path) -> str:
    """pytest's summary lines (one per run), or how far it got when stopped at its share."""
    text = (out / "pytest.txt").read_text() if (out / "pytest.txt").exists() else ""
    done = [line.strip("= ") for line in text.splitlines() if re.search(r"\d+ (passed|failed|error|deselected)", line)]
    if done:
        return "; ".join(done)
    dots = sum(line.count(".") for line in text.splitlines() if set(line.strip()) <= set(".sFExX"))
    return f"stopped before pytest's summary, {dots} tests passed by then" if text else "not run"


def accuracy(rows: pd.DataFrame) -> list[str]:
    """One line per (model, variant): each backend's worst rel_err per cache dtype (compute dtype
    first, then FP8), or the status of a case that is not ok."""
    out = []
    for (model, variant), g in rows.groupby(["model", "variant"], sort=True):
        cells = []
        for backend, b in g.groupby("backend", sort=True):
            per_cache = []
            for _, c in b.groupby(b["kv_dtype"].fillna("") != b["dtype"], sort=True):  # False: compute dtype
                ok = c[c["status"] == "ok"]
                per_cache.append(f"{ok['rel_err'].max():.2g}" if not ok.empty else "/".join(sorted(set(c["status"]))))
            cells.append(f"{backend} {' | '.join(per_cache)}")
        out.append(f"{model} {variant}: " + ", ".join(cells))
    return out


def timings(rows: pd.DataFrame, by: list[str]) -> list[str]:
    ok = rows[rows["status"] == "ok"]
    out = []
    for key, g in ok.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        pct = g["roofline_pct"].median()
        out.append(f"{' '.join(str(k) for k in key if str(k) not in ('', 'nan'))}: {g['latency_ms'].median():.4g} ms"
                   + (f", {g['gbps'].median():.0f} GB/s, {pct:.0f}% roofline" if pd.notna(pct) else ""))
    skipped = rows[rows["status"] != "ok"]
    if not skipped.empty:
        out.append("not ok: " + ", ".join(f"{s} {n}" for s, n in skipped["status"].value_counts().items()))
    return _columns(out)


def configs(found: dict[str, pd.DataFrame]) -> list[str]:
    out = []
    for name, rows in found.items():
        if name.startswith("config-"):
            for _, r in rows[rows["status"] == "ok"].iterrows():
                out.append(f"{name[7:]} {r['model']}: {r['latency_ms']:.4g} ms")
    return _columns(sorted(out))


def memory(found: dict[str, pd.DataFrame], out: Path) -> list[str]:
    """Step 5: analytic == cache tensors (exact), the allocator and NVML deltas beside them."""
    cols = ["kv_cache_bytes", "kv_cache_bytes_measured", "kv_cache_bytes_allocator", "kv_cache_bytes_nvml"]
    frames = [r.assign(run=name) for name, r in found.items() if set(cols) <= set(r.columns)]
    if not frames:
        return ["no rows yet"]
    rows = pd.concat(frames)
    rows = rows[rows["status"] == "ok"]
    keep = ["run", "model", "variant", "backend", "kv_dtype", "cache_layout", "batch", "seq_len", *cols]
    table = rows[keep].drop_duplicates()
    table.to_csv(out / "memory.csv", index=False)
    exact = (table["kv_cache_bytes"] == table["kv_cache_bytes_measured"]).sum()
    lines = [f"analytic == cache tensors: {exact} of {len(table)} ok rows"]
    for col in cols[2:]:
        have = table[table[col].notna() & (table[col] > 0)]
        if have.empty:
            lines.append(f"{col}: not measured here (CUDA only)")
            continue
        ratio = have[col] / have["kv_cache_bytes"]
        lines.append(f"{col} / analytic: median {ratio.median():.4f}, range {ratio.min():.4f}-{ratio.max():.4f} "
                     f"over {len(have)} rows")
    return lines


def _columns(items: list[str]) -> list[str]:
    """Two items a line when both fit in the screen's width."""
    half = WIDTH // 2 - 2
    if not items or max(len(i) for i in items) > half:
        return items
    return [f"{a:<{half}}  {b}" for a, b in zip(items[::2], [*items[1::2], ""], strict=True)]


def main(work: Path, out: Path, device: str) -> None:
    found = runs(work)
    lines = [f"GPU window summary ({device}); {env_line(out)}", "steps:", *steps(work)]
    lines.append(f"tests: {tests(out)}")
    if "accuracy" in found:
        lines += ["1. rel_err vs float64 (compute dtype | fp8_e4m3):", *("  " + s for s in accuracy(found["accuracy"]))]
    if "kernels" in found:
        by = ["model", "variant", "backend", "kv_dtype", "cache_layout"]
        lines += ["2. core alone (median):", *("  " + s for s in timings(found["kernels"], by))]
    if any(n.startswith("config-") for n in found):
        lines += ["2. triton launch configurations:", *("  " + s for s in configs(found))]
    for name in ("gpu-baseline-cold", "gpu-baseline-graph"):
        if name in found:
            counts = found[name]["status"].value_counts()
            lines.append(f"3. {name}: {len(found[name])} rows ("
                         + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    profiles = sorted(p.name for p in (work / "profile").glob("*")) if (work / "profile").exists() else []
    lines.append(f"4. profile: {len(profiles)} files" + (f" ({', '.join(profiles[:3])})" if profiles else ""))
    lines += ["5. KV-cache bytes:", *("  " + s for s in memory(found, out))]
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: gpu_window_summary.py WORK OUT DEVICE")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
