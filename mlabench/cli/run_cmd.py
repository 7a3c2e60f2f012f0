"""`mlabench run`: one case from flags, measured and printed (a table, or --json).

A one-case `sweep`: the flags become a one-point suite named `run`, planned by
`sweep.plan_sweep` and measured in `sweep.run_context`, so `run` and `sweep` share
validation, settings, backend options, peaks and the runner, and the same case has the
same key. Nothing is written unless `--out DIR` asks for a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlabench.cli.common import (
    AccuracyOpt,
    BudgetOpt,
    CompileModeOpt,
    CudaGraphOpt,
    DeviceOpt,
    JsonOpt,
    MaxSamplesOpt,
    MemorySnapshotOpt,
    MinSamplesOpt,
    NvtxOpt,
    OptionOpt,
    ProbeOpt,
    ProfileOpt,
    SdpaKernelOpt,
    SeedOpt,
    SetOpt,
    ThreadsOpt,
    TimeoutOpt,
    WarmupOpt,
    clean_for_json,
    err_console,
    flag_settings,
    out_console,
    parse_assignments,
    parse_options,
    print_json,
)
from mlabench.errors import UsageError

# `run` samples one case for longer than a sweep samples each of many.
RUN_SETTINGS = {"budget_s": 1.0}


def run(
    model: Annotated[str, typer.Option(help="Preset (see `mlabench list`).")] = "tiny",
    variant: Annotated[str, typer.Option(help="Attention variant.")] = "mla-absorbed",
    backend: Annotated[str, typer.Option(help="Backend.")] = "eager",
    mode: Annotated[str, typer.Option(help="prefill or decode.")] = "decode",
    batch: Annotated[int, typer.Option(help="Sequences per step.")] = 1,
    seq_len: Annotated[str, typer.Option(help="Context length (decode: including the new tokens), or a ragged "
                                         "batch's distribution, e.g. uniform:1024-32768.")] = "1024",
    q_len: Annotated[int, typer.Option(help="New tokens per decode step.")] = 1,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32.")] = "auto",
    scope: Annotated[str, typer.Option(help="Timing scope: step (the whole layer) or core (the attention "
                                            "core alone).")] = "step",
    device: DeviceOpt = "auto",
    assignments: SetOpt = None,
    option: OptionOpt = None,
    compile_mode: CompileModeOpt = None,
    sdpa_kernel: SdpaKernelOpt = None,
    budget: BudgetOpt = None,
    warmup: WarmupOpt = None,
    min_samples: MinSamplesOpt = None,
    max_samples: MaxSamplesOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    cuda_graph: CudaGraphOpt = None,
    accuracy: AccuracyOpt = None,
    seed: SeedOpt = None,
    probe: ProbeOpt = True,
    out: Annotated[Path | None, typer.Option(help="Also record the case in this run directory (results.csv, "
                                                  "samples, meta.json) [default: write nothing].",
                                             show_default=False)] = None,
    profile: ProfileOpt = None,
    memory_snapshot: MemorySnapshotOpt = False,
    nvtx: NvtxOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure a single case and print it."""
    from mlabench import schema
    from mlabench.backends import served_variants
    from mlabench.cli.profile_view import announce_profile, print_profile
    from mlabench.measure.envinfo import resolve_device
    from mlabench.profiling.request import build_request, check_request
    from mlabench.runner import run_case
    from mlabench.suites import Suite
    from mlabench.sweep import Overrides, plan_sweep, run_context, run_sweep
    from mlabench.variants import variant_names

    settings = flag_settings({"budget_s": budget, "warmup_s": warmup, "min_samples": min_samples,
                              "max_samples": max_samples, "threads": threads, "cuda_graph": cuda_graph,
                              "accuracy": accuracy, "seed": seed, "timeout_s": timeout})
    options = parse_options(option, {"compile_mode": compile_mode, "sdpa_kernel": sdpa_kernel})
    request = build_request(profile, None, memory_snapshot, nvtx)
    dev = resolve_device(device)
    shape_axes = parse_assignments(assignments)
    for key, values in shape_axes.items():
        if len(values) != 1:
            raise UsageError(f"--set {key}: `run` measures one case; give one value")
    # A sweep drops a (variant, backend) pair the backend cannot serve; one case must say why instead.
    served = served_variants()
    if variant not in variant_names():  # before the backend check, which would blame the backend
        raise UsageError(f"--variant: unknown variant {variant!r} (choose from {', '.join(variant_names())})")
    if backend in served and variant not in served[backend]:
        raise UsageError(f"--backend: {backend} does not serve {variant} (it serves {', '.join(served[backend])})")
    context = int(seq_len) if seq_len.strip().isdigit() else seq_len.strip()  # a length, or a distribution
    grid = {"model": [model], "variant": [variant], "backend": [backend], "mode": [mode], "batch": [batch],
            "seq_len": [context], "q_len": [q_len], "dtype": [dtype], "scope": [scope], **shape_axes}
    suite = Suite(name="run", description="one case from `mlabench run`", path="", grids=(grid,),
                  settings=RUN_SETTINGS)
    plan = plan_sweep(suite, dev, Overrides(settings=settings, options=options), out)
    (case,) = plan.cases  # one value per axis: one case
    check_request(request, plan.cases)
    err_console.print(f"measuring {case.label()} on {dev}")
    announce_profile(request, dev.type, err_console)
    if out is None:
        result = run_case(case, run_context(plan, probe, request))
    else:
        results = run_sweep(plan, resume=False, probe=probe, profile=request).results
        if not results:  # Ctrl-C during the case: nothing measured, nothing to print
            raise typer.Exit(130)
        result = results[0]
    if as_json:
        print_json(clean_for_json(result.row.as_dict()))
    else:
        table = Table(show_header=False, box=None)
        for k, v in result.row.as_dict().items():
            if v is not None and v != "":
                table.add_row(f"[bold]{k}[/]", f"{v:.6g}" if isinstance(v, float) else str(v))
        out_console.print(table)
    if result.profile is not None:  # stderr under --json, which owns stdout
        print_profile(result.profile, err_console if as_json else out_console)
    if result.status in schema.FAILED_STATUSES:
        raise typer.Exit(1)
