"""`mlabench env`: the environment fingerprint; `--probe` measures the roofline peaks."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mlabench.cli.common import DeviceOpt, JsonOpt, clean_for_json, out_console, print_json


def env(
    device: DeviceOpt = "auto",
    probe: Annotated[bool, typer.Option("--probe", help="Measure copy and read bandwidth and matmul rate.")] = False,
    dtype: Annotated[str, typer.Option(help="Comma-separated dtypes to probe the matmul rate for "
                                            "[default: bfloat16 on CUDA, float32 on CPU].", metavar="LIST",
                                       show_default=False)] = "",
    as_json: JsonOpt = False,
) -> None:
    """Show the environment (device, driver, CUDA, torch, triton, CPU) and optionally probe peaks."""
    from mlabench.cli.common import split_list
    from mlabench.config import ShapeError, canonical_dtype
    from mlabench.errors import UsageError
    from mlabench.measure.envinfo import fingerprint, resolve_device
    from mlabench.measure.peaks import probe_peaks, spec_peaks

    dev = resolve_device(device)
    info = fingerprint(dev)
    info.pop("created_utc")
    info.pop("command")
    try:
        dtypes = [canonical_dtype(d) for d in (split_list("--dtype", dtype) if dtype else
                                               ["bfloat16" if dev.type == "cuda" else "float32"])]
    except ShapeError as exc:
        raise UsageError(f"--{exc}") from None
    peaks = probe_peaks(dev, dtypes) if probe else spec_peaks(info["device"]["name"], dtypes)
    info["peaks"] = peaks.as_meta(dtypes[0])
    if as_json:
        print_json(clean_for_json(info))
        return
    table = Table(show_header=False, box=None)

    def add(key: str, value: object) -> None:
        table.add_row(f"[bold]{key}[/]", "-" if value is None else str(value))

    for key in ("mlabench_version", "git_commit", "python", "platform", "torch", "triton"):
        add(key, info[key])
    for key, value in info["device"].items():
        add(f"device.{key}", value)
    add("cpu.model", info["cpu"]["model"])
    add("cpu.threads", info["cpu"]["threads"])
    add("peaks.source", peaks.source)
    add("peaks.bandwidth", f"{peaks.bytes_per_s / 1e9:.1f} GB/s ({peaks.bandwidth_probe}, used by roofline_pct)"
        if peaks.bytes_per_s else None)
    add("peaks.bandwidth_copy", f"{peaks.copy_bytes_per_s / 1e9:.1f} GB/s" if peaks.copy_bytes_per_s else None)
    for name, rate in peaks.flops_per_s.items():
        add(f"peaks.matmul {name}", f"{rate / 1e12:.3f} TFLOP/s")
    out_console.print(table)
