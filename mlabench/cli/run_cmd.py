"""`mlabench run`: one case from flags, measured and printed (a table, or --json).

A one-case `sweep`: the flags become a one-point suite named `run`, planned by
`sweep.plan_sweep` and measured in `sweep.run_context`, so `run` and `sweep` share
validation, settings, backend options, peaks and the runner, and the same case has the
same key. Nothing is written unless `--out DIR` asks for a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mlabench.cli.common import (
    DeviceOpt,
    JsonOpt,
    SetOpt,
    check_set_fields,
    clean_for_json,
    err_console,
    out_console,
    parse_assignments,
    print_json,
)
from mlabench.cli.flags import BackendFlags, MeasureFlags, ProfileFlags, with_flag_groups
from mlabench.errors import UsageError

# `run` samples one case for longer than a sweep samples each of many.
RUN_SETTINGS = {"budget_s": 1.0}


@dataclass
class RunCase:
    """The one case: the same axes as `sweep`'s flags, one value each."""

    model: Annotated[str, typer.Option(help="Model preset (see `mlabench list`).", metavar="NAME")] = "tiny"
    variant: Annotated[str, typer.Option(help="Attention variant.", metavar="NAME")] = "mla-absorbed"
    backend: Annotated[str, typer.Option(help="Backend.", metavar="NAME")] = "eager"
    mode: Annotated[str, typer.Option(help="prefill or decode.", metavar="MODE")] = "decode"
    batch: Annotated[int, typer.Option(help="Sequences per step.", metavar="N")] = 1
    seq_len: Annotated[str, typer.Option(help="Context length (decode: including the new tokens), or a ragged "
                                         "batch's distribution: uniform:1024-32768, lognormal:median=4096,sigma=1, "
                                         "list:900/4096.", metavar="N|SPEC")] = "1024"
    q_len: Annotated[int, typer.Option(help="New tokens per decode step.", metavar="N")] = 1
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32.",
                                       metavar="DTYPE")] = "auto"
    kv_dtype: Annotated[str | None, typer.Option(help="What the cache stores: auto (the compute dtype), fp8_e4m3, "
                                                      "fp8_e5m2 [default: auto].", metavar="DTYPE",
                                                 show_default=False)] = None
    cache_layout: Annotated[str | None, typer.Option(help="contiguous, paged (64-token pages) or paged:PAGE_SIZE "
                                                          "[default: contiguous].", metavar="LAYOUT",
                                                     show_default=False)] = None
    kv_lora_rank: Annotated[int | None, typer.Option(help="Latent rank (MLA d_c, lowrank-kv r, linformer k) "
                                                          "[default: the preset's].", metavar="N",
                                                     show_default=False)] = None
    num_kv_heads: Annotated[int | None, typer.Option(help="KV heads (GQA groups) [default: the preset's].",
                                                     metavar="N", show_default=False)] = None
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree: the case runs on that many ranks "
                                                "(processes on the CPU, GPUs on CUDA); must divide num_heads, and "
                                                "divide or be a multiple of the KV groups [default: 1].",
                                           metavar="N", show_default=False)] = None
    scope: Annotated[str, typer.Option(help="Timing scope: step (the whole layer) or core (the attention "
                                            "core alone).", metavar="SCOPE")] = "step"
    assignments: SetOpt = None

    def grid(self) -> dict[str, list[Any]]:
        """The one-point grid: every axis one value, --set's fields among them."""
        point = {k: v for k, v in vars(self).items() if k != "assignments" and v is not None}
        seq = str(point["seq_len"]).strip()
        point["seq_len"] = int(seq) if seq.isdigit() else seq  # a length, or a distribution
        shape = check_set_fields(parse_assignments(self.assignments), given=point)
        for key, values in shape.items():
            if len(values) != 1:
                raise UsageError(f"--set {key}: `run` measures one case; give one value")
        return {**{k: [v] for k, v in point.items()}, **shape}


@with_flag_groups
def run(case_flags: RunCase, measure: MeasureFlags, backend_options: BackendFlags, profiling: ProfileFlags,
        device: DeviceOpt = "auto",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Also record the case in this run directory "
                                                 "(results.csv, samples, meta.json) [default: write nothing].",
                                                 metavar="DIR", show_default=False)] = None,
        as_json: JsonOpt = False) -> None:
    """Measure a single case and print it."""
    from mlabench import schema
    from mlabench.backends import BACKENDS, option_names, served_variants
    from mlabench.cli.profile_view import announce_profile, print_profile
    from mlabench.measure.envinfo import resolve_device
    from mlabench.profiling.request import check_request
    from mlabench.suites import Suite
    from mlabench.sweep import Overrides, plan_sweep, run_context, run_sweep
    from mlabench.tp import close_rank_groups, run_any_case
    from mlabench.variants import variant_names

    settings = measure.settings()
    options = backend_options.options()
    request = profiling.request()
    dev = resolve_device(device)
    grid = case_flags.grid()
    variant, backend = case_flags.variant, case_flags.backend
    # A sweep drops a (variant, backend) pair the backend cannot serve; one case must say why instead.
    served = served_variants()
    if variant not in variant_names():  # before the backend check, which would blame the backend
        raise UsageError(f"--variant: unknown variant {variant!r} (choose from {', '.join(variant_names())})")
    if backend in served and variant not in served[backend]:
        raise UsageError(f"--backend: {backend} does not serve {variant} (it serves {', '.join(served[backend])})")
    declared = BACKENDS[backend].options if backend in BACKENDS else {}
    for name in options:  # one backend: an option it does not take can do nothing, so it is a mistake
        if name in option_names() and name not in declared:
            raise UsageError(f"--option {name}: backend {backend} does not take it (its options: "
                             f"{', '.join(declared) or 'none'})")
    suite = Suite(name="run", description="one case from `mlabench run`", path="", grids=(grid,),
                  settings=RUN_SETTINGS)
    plan = plan_sweep(suite, dev, Overrides(settings=settings, options=options), out)
    (case,) = plan.cases  # one value per axis: one case
    check_request(request, plan.cases)
    err_console.print(f"measuring {case.label()} on {dev}")
    announce_profile(request, dev.type, err_console)
    if out is None:
        try:
            result = run_any_case(case, run_context(plan, measure.probe, request))  # tp > 1: on its ranks
        finally:
            close_rank_groups()
    else:
        results = run_sweep(plan, resume=False, probe=measure.probe, profile=request).results
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
    if schema.sdpa_math(result.row.backend_detail):
        err_console.print("note: SDPA ran its unfused math kernel here (no fused kernel takes these inputs on "
                          f"{dev}), far slower than a fused one; backend_detail {result.row.backend_detail}",
                          markup=False, soft_wrap=True)
    if result.profile is not None:  # stderr under --json, which owns stdout
        print_profile(result.profile, err_console if as_json else out_console)
    if result.status in schema.FAILED_STATUSES:
        raise typer.Exit(1)
