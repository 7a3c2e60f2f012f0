"""`mlabench kv`: KV-cache capacity planning from the analytic model; nothing runs on a device.

Thin: the flags become a shape and a planning request for `mlabench.capacity`, whose rows
are printed as a table or one JSON document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.table import Table

from mlabench.cli.common import (
    JsonOpt,
    SetOpt,
    check_set_fields,
    err_console,
    human_bytes,
    out_console,
    parse_assignments,
    parse_bytes,
    print_json,
    split_list,
)
from mlabench.cli.flags import with_flag_groups
from mlabench.errors import UsageError


@dataclass
class KvRequest:
    """What to plan: the model and its cache, the batch and context, the GPUs and the budget."""

    model: Annotated[str, typer.Option(help="Model preset (see `mlabench list`).", metavar="NAME")] = "deepseek-v3"
    preset: Annotated[str | None, typer.Option(hidden=True, help="Old spelling of --model.")] = None
    seq_len: Annotated[int, typer.Option(help="Context length per sequence.", metavar="N")] = 32768
    batch: Annotated[int, typer.Option(help="Sequences held at once.", metavar="N")] = 1
    dtype: Annotated[str, typer.Option(help="Compute dtype (the cache's too unless --kv-dtype says otherwise).",
                                       metavar="DTYPE")] = "bfloat16"
    kv_dtype: Annotated[str, typer.Option(help="What the cache stores: auto (the compute dtype), fp8_e4m3 or "
                                               "fp8_e5m2 (scales counted; the table says their layout).",
                                          metavar="DTYPE")] = "auto"
    cache_layout: Annotated[str, typer.Option(help="contiguous, or paged[:PAGE_SIZE]: each sequence holds whole "
                                                   "pages.", metavar="LAYOUT")] = "contiguous"
    memory: Annotated[str | None, typer.Option(help="Memory budget for the cache, e.g. 80GiB: prints the longest "
                                                    "context that fits.", metavar="SIZE", show_default=False)] = None
    variant: Annotated[str | None, typer.Option(help="Comma-separated variants [default: all the preset can run].",
                                                metavar="LIST", show_default=False)] = None
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree: per-GPU bytes with the heads split over N GPUs "
                                         "(must divide num_heads); --memory is then one GPU's budget.",
                                    metavar="N")] = 1
    measured: Annotated[str | None, typer.Option(help="With --tp N: a tensor-parallel run directory whose ranks "
                                                      "measured the per-GPU figures [default: the newest tp suite "
                                                      "run under results/runs].", metavar="DIR",
                                                 show_default=False)] = None
    assignments: SetOpt = None

    def shape(self) -> Any:
        """The preset with --dtype, --kv-dtype and --set applied (--set dtype=/kv_dtype= act as the flags)."""
        from mlabench.config import ShapeError, canonical_dtype, canonical_kv_dtype, from_name

        fields = {}
        for key, values in check_set_fields(parse_assignments(self.assignments), shape_only=True).items():
            if len(values) != 1:
                raise UsageError(f"--set {key}: give one value")
            fields[key] = values[0]
        dtype, kv_dtype = str(fields.pop("dtype", self.dtype)), str(fields.pop("kv_dtype", self.kv_dtype))
        try:
            compute = canonical_dtype(dtype)
        except ShapeError as exc:
            raise UsageError(f"--dtype: {exc}") from None
        try:
            cache = canonical_kv_dtype(kv_dtype, compute)
        except ShapeError as exc:
            raise UsageError(f"--kv-dtype: {exc}") from None
        try:
            return from_name(self.preset or self.model, dtype=compute, kv_dtype=cache, **fields)
        except ShapeError as exc:
            raise UsageError(str(exc) if exc.field != "model" else f"--model: {exc}") from None

    def layout(self) -> Any:
        from mlabench.layout import parse_layout

        try:
            return parse_layout(self.cache_layout)
        except UsageError as exc:
            raise UsageError(f"--{str(exc).replace('cache_layout', 'cache-layout', 1)}") from None


@with_flag_groups
def kv(request: KvRequest, as_json: JsonOpt = False) -> None:
    """KV-cache bytes per token per layer, per token for the whole model, for the batch, per variant; with
    --tp N, what one GPU holds. Analytic: nothing is allocated or run."""
    from mlabench.capacity import CapacityError, plan_capacity

    shape, layout = request.shape(), request.layout()
    budget = parse_bytes("--memory", request.memory) if request.memory else None
    try:
        rows = plan_capacity(shape, split_list("--variant", request.variant), batch=request.batch,
                             seq_len=request.seq_len, tp=request.tp, memory=budget, page_size=layout.page_size)
    except CapacityError as exc:  # the planner names its parameter; the command line names the flag
        raise UsageError(f"--{exc.param.replace('_', '-')}{str(exc)[len(exc.param):]}") from None
    doc = {"preset": request.preset or request.model, "dtype": shape.dtype, "kv_dtype": shape.cache_dtype,
           "layers": shape.num_layers, "batch": request.batch, "seq_len": request.seq_len, "tp": request.tp,
           "cache_layout": layout.text or "contiguous", "memory_bytes": budget, "analytic": True,
           "variants": [r.as_dict() for r in rows]}
    if request.tp > 1:
        doc.update(_confirmed(request, doc["variants"]))
    if as_json:
        print_json(doc)
    else:
        _print_table(doc, shape)


def _print_table(doc: dict[str, Any], shape: Any) -> None:
    rows, tp, budget, seq_len = doc["variants"], doc["tp"], doc["memory_bytes"], doc["seq_len"]
    what = shape.dtype if not shape.kv_quantized else f"{shape.kv_dtype} (compute {shape.dtype})"
    per = " per GPU" if tp > 1 else ""
    paged = f", {doc['cache_layout']}" if doc["cache_layout"] != "contiguous" else ""
    table = Table(title=f"{doc['preset']}: KV cache, {what}, {shape.num_layers} layers, batch {doc['batch']} x "
                        f"{seq_len} tokens{paged}" + (f", tensor parallel {tp}" if tp > 1 else "")
                        + (f", budget {human_bytes(budget)}{per}" if budget else ""),
                  title_justify="left", header_style="bold")
    layouts_shown = any(r["layout"] for r in rows)  # a stored layout (FP8 scales) beside every figure it shapes
    columns = ["variant", "per token per layer"] + (["layout"] if layouts_shown else []) + \
        ([f"per GPU (tp={tp})"] if tp > 1 else []) + [f"per token (model){per}", f"batch x {seq_len}{per}"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "layout") else "right")
    if budget is not None:
        table.add_column("fits")
        table.add_column("longest context", justify="right")
    for r in rows:
        cells = [r["variant"] + (f" (G={r['num_kv_heads']})" if r["num_kv_heads"] else ""),
                 f"{r['bytes_per_token_per_layer']:,} B"] + ([r["layout"] or "-"] if layouts_shown else [])
        if tp > 1:
            cells.append(f"{r['bytes_per_token_per_layer_per_gpu']:,} B")
        cells += [human_bytes(r["bytes_per_token_per_gpu"]), human_bytes(r["batch_bytes_per_gpu"])]
        if budget is not None:
            cells += ["[green]yes[/]" if r["fits"] else "[red]no[/]", f"{r['max_seq_len']:,}"]
        table.add_row(*cells)
    layouts: dict[str, str] = {}
    for r in rows:  # the scale layout is part of the figures: say once per layout what was counted
        if r["layout"]:
            layouts.setdefault(r["layout"], r["scales"] + (" (4 B each, in the batch column)" if r["scale_bytes"]
                                                           else " (in every column)"))
    table.caption = "; ".join(f"{name}: {text}" for name, text in layouts.items()) or None
    table.caption_justify = "left"
    out_console.print(table)
    if tp > 1:
        err_console.print(f"[dim]analytic: the heads split over {tp} GPUs; what cannot split (a shared latent, a "
                          "RoPE key, KV heads past G) is counted on every GPU[/]")
        run = doc.get("measured_run")
        confirmed = [f"{r['variant']} (on {', '.join(r['confirmed_on'])})" for r in rows if r.get("confirmed_on")]
        if run is None:
            err_console.print("[dim]no tensor-parallel run to confirm them: `mlabench sweep --suite tp` measures "
                              "each rank's cache (or give --measured DIR)[/]")
        elif confirmed:
            err_console.print(f"[dim]measured on {tp} ranks in {run}, equal to the formula: {'; '.join(confirmed)}; "
                              "the others were not measured at this degree[/]", soft_wrap=True)
        else:
            err_console.print(f"[dim]{run} measured none of these variants at tp = {tp}[/]", soft_wrap=True)
    if budget is not None:
        err_console.print("[dim]budget counts the KV cache only (no weights or activations)[/]")


def _confirmed(request: KvRequest, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which per-GPU figures a measured tensor-parallel run confirmed: each row's `confirmed_on`
    (the models it ran on, empty when not measured at this degree) and the run's directory."""
    from pathlib import Path

    from mlabench.tp.confirmed import confirmed_variants, newest_tp_run

    run = Path(request.measured) if request.measured else newest_tp_run()
    if run is None:
        return {"measured_run": None}
    if not (run / "results.csv").is_file():
        raise UsageError(f"--measured: {run} is not a run directory (no results.csv)")
    confirmed = confirmed_variants(run, request.tp)
    for row in rows:
        row["confirmed_on"] = confirmed.get(row["variant"], [])
    return {"measured_run": str(run)}
