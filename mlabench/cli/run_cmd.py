"""`mlabench run`: one case from flags, measured and printed (a table, or --json)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mlabench.cli.common import clean_for_json, err_console, out_console, parse_assignments, print_json
from mlabench.errors import UsageError


def run(
    model: Annotated[str, typer.Option(help="Preset (see `mlabench list`).")] = "tiny",
    variant: Annotated[str, typer.Option(help="Attention variant.")] = "mla-absorbed",
    backend: Annotated[str, typer.Option(help="Backend.")] = "eager",
    mode: Annotated[str, typer.Option(help="prefill or decode.")] = "decode",
    batch: Annotated[int, typer.Option(help="Sequences per step.")] = 1,
    seq_len: Annotated[int, typer.Option(help="Context length (decode: including the new tokens).")] = 1024,
    q_len: Annotated[int, typer.Option(help="New tokens per decode step.")] = 1,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32.")] = "auto",
    scope: Annotated[str, typer.Option(help="Timing scope: step (the whole layer) or core (the attention "
                                            "core alone).")] = "step",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    assignments: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a shape field: --set kv_lora_rank=256 (repeatable).")] = None,
    budget: Annotated[float, typer.Option(help="Seconds of sampling.")] = 1.0,
    threads: Annotated[int, typer.Option(help="CPU threads (1 keeps samples steady; 0 = all cores).")] = 1,
    compile_mode: Annotated[str | None, typer.Option(help="torch.compile mode.", show_default=False)] = None,
    sdpa_kernel: Annotated[str | None, typer.Option(help="SDPA kernel.", show_default=False)] = None,
    accuracy: Annotated[bool, typer.Option("--accuracy/--no-accuracy", help="Check against float64.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Measure a single case and print it."""
    import torch

    from mlabench import schema
    from mlabench.backends import apply_options, served_variants
    from mlabench.measure.envinfo import device_label, resolve_device
    from mlabench.measure.memory import open_nvml
    from mlabench.measure.timing import TimingSettings
    from mlabench.runner import RunContext, run_case
    from mlabench.suites import Suite, check_settings, expand
    from mlabench.sweep import measure_peaks
    from mlabench.variants import variant_names

    budget = check_settings({"budget_s": budget}, "--budget")["budget_s"]  # nan, inf or -1 would never return
    threads = check_settings({"threads": threads}, "--threads")["threads"]
    dev = resolve_device(device)
    shape_axes = parse_assignments(assignments)
    for key, values in shape_axes.items():
        if len(values) != 1:
            raise UsageError(f"--set {key}: `run` measures one case; give one value")
    grid = {"model": [model], "variant": [variant], "backend": [backend], "mode": [mode], "batch": [batch],
            "seq_len": [seq_len], "q_len": [q_len], "dtype": [dtype], "scope": [scope], **shape_axes}
    options = {k: v for k, v in {"compile_mode": compile_mode, "sdpa_kernel": sdpa_kernel}.items() if v}
    suite = Suite(name="run", description="", path="", grids=(grid,), options=options)
    served = served_variants()
    if variant not in variant_names():  # before the backend check, which would blame the backend
        raise UsageError(f"--variant: unknown variant {variant!r} (choose from {', '.join(variant_names())})")
    if backend in served and variant not in served[backend]:
        raise UsageError(f"--backend: {backend} does not serve {variant} (it serves {', '.join(served[backend])})")
    case = apply_options(expand(suite, device_label(dev), served).cases, options)[0]
    err_console.print(f"measuring {case.label()} on {dev}")
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    ctx = RunContext(device=dev, timing=TimingSettings(budget_s=budget, threads=threads), nvml=open_nvml(dev),
                     accuracy=accuracy,
                     peaks=measure_peaks(dev, [case.dtype], probe=True))
    result = run_case(case, ctx)
    if as_json:
        print_json(clean_for_json(result.row.as_dict()))
    else:
        table = Table(show_header=False, box=None)
        for k, v in result.row.as_dict().items():
            if v is not None and v != "":
                table.add_row(f"[bold]{k}[/]", f"{v:.6g}" if isinstance(v, float) else str(v))
        out_console.print(table)
    if result.status in schema.FAILED_STATUSES:
        raise typer.Exit(1)
