"""`mlabench kv`: KV-cache capacity planning from the analytic model; nothing runs on a device."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from mlabench.cli.common import (
    JsonOpt,
    SetOpt,
    err_console,
    human_bytes,
    out_console,
    parse_assignments,
    parse_bytes,
    print_json,
    split_list,
)
from mlabench.errors import UsageError


def kv(
    preset: Annotated[str, typer.Option(help="Model preset (see `mlabench list`).")] = "deepseek-v3",
    seq_len: Annotated[int, typer.Option(help="Context length per sequence.")] = 32768,
    batch: Annotated[int, typer.Option(help="Sequences held at once.")] = 1,
    dtype: Annotated[str, typer.Option(help="Compute dtype (the cache's too unless --kv-dtype says otherwise).")] = \
        "bfloat16",
    kv_dtype: Annotated[str, typer.Option(help="What the cache stores: auto (the compute dtype), fp8_e4m3 or "
                                               "fp8_e5m2 (scales counted; the table says their layout).")] = "auto",
    memory: Annotated[str | None, typer.Option(help="Memory budget for the cache, e.g. 80GiB: prints the longest "
                                                    "context that fits.", show_default=False)] = None,
    variant: Annotated[str | None, typer.Option(help="Comma-separated variants [default: all the preset can run].",
                                                show_default=False)] = None,
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree: per-GPU bytes with the heads split over N GPUs "
                                         "(must divide num_heads); --memory is then one GPU's budget.")] = 1,
    assignments: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """KV-cache bytes per token per layer, per token for the whole model, for the batch, per variant; with
    --tp N, what one GPU holds (docs/variants.md §6). Analytic: nothing is allocated or run."""
    from mlabench import analytic
    from mlabench.config import ShapeError, canonical_dtype, canonical_kv_dtype, from_name
    from mlabench.variants import VARIANT_CLASSES, shape_for_variant

    if seq_len <= 0 or batch <= 0:
        raise UsageError(f"--{'seq-len' if seq_len <= 0 else 'batch'}: must be a positive integer")
    fields = {}
    for key, values in parse_assignments(assignments).items():
        if len(values) != 1:
            raise UsageError(f"--set {key}: give one value")
        fields[key] = values[0]
    try:
        compute = canonical_dtype(dtype)
    except ShapeError as exc:
        raise UsageError(f"--dtype: {exc}") from None
    try:
        cache = canonical_kv_dtype(kv_dtype, compute)
    except ShapeError as exc:
        raise UsageError(f"--kv-dtype: {exc}") from None
    try:
        shape = from_name(preset, dtype=compute, kv_dtype=cache, **fields)
    except ShapeError as exc:
        raise UsageError(str(exc) if exc.field != "model" else f"--preset: {exc}") from None
    if tp < 1 or shape.num_heads % tp:
        raise UsageError(f"--tp: tensor-parallel degree {tp} does not divide num_heads ({shape.num_heads}) "
                         f"of {preset}")
    budget = parse_bytes("--memory", memory) if memory else None
    wanted = split_list("--variant", variant) or list(VARIANT_CLASSES)
    rows: list[dict[str, Any]] = []
    shown: list[tuple[type, Any]] = []
    for name in wanted:
        if name not in VARIANT_CLASSES:
            raise UsageError(f"--variant: unknown variant {name!r} (choose from {', '.join(VARIANT_CLASSES)})")
        try:
            sh = shape_for_variant(name, shape)
        except ShapeError as exc:
            if variant:  # asked for explicitly: say why not
                raise UsageError(f"--variant {name}: {exc}") from None
            continue
        if VARIANT_CLASSES[name].kv_elements_per_token(sh) is None:
            if variant:
                raise UsageError(f"--variant: {name} keeps a fixed number of rows per sequence, not a per-token cache")
            continue
        cls = VARIANT_CLASSES[name]
        try:
            per_gpu = analytic.kv_bytes_per_token_per_gpu(name, sh, tp)
        except ShapeError as exc:  # a split that straddles KV groups: no GPU layout to count
            raise UsageError(f"--tp: {str(exc).removeprefix('tp: ')}, in {name} of {preset}") from None
        except NotImplementedError as exc:
            if variant:
                raise UsageError(f"--variant {name}: {exc}") from None
            continue
        per_token_elems = cls.kv_elements_per_token(sh)
        if not variant and any(other == sh and (issubclass(c, cls) or issubclass(cls, c))
                               and c.kv_elements_per_token(other) == per_token_elems for c, other in shown):
            continue  # the same shape as a special case of itself: gqa with G = H is mha (dsa's cache differs)
        shown.append((cls, sh))
        per_layer = analytic.kv_bytes_per_token(name, sh)
        per_token = per_layer * sh.num_layers
        fixed = cls.kv_fixed_bytes(sh) * sh.num_layers  # per-tensor FP8 scales: per layer, not per token
        total = analytic.kv_cache_bytes(name, sh, batch, seq_len, layers=sh.num_layers)
        row = {"variant": name, "family": VARIANT_CLASSES[name].family,
               "num_kv_heads": sh.kv_heads if VARIANT_CLASSES[name].family == "gqa" else None,
               "bytes_per_token_per_layer": per_layer, "bytes_per_token": per_token, "batch_bytes": total,
               "scale_bytes": fixed, "scales": cls.kv_scale_layout(sh) or None,
               "layout": fmt.layout if (fmt := cls.kv_format(sh)) is not None and fmt.layout else None}
        gpu_token = per_gpu * sh.num_layers
        row.update(bytes_per_token_per_layer_per_gpu=per_gpu, bytes_per_token_per_gpu=gpu_token,
                   batch_bytes_per_gpu=analytic.kv_cache_bytes_per_gpu(name, sh, batch, seq_len, tp,
                                                                       layers=sh.num_layers))
        if budget is not None:  # one GPU's budget against what one GPU holds
            row["fits"] = row["batch_bytes_per_gpu"] <= budget
            row["max_seq_len"] = max(budget - fixed, 0) // (gpu_token * batch)  # scales on every GPU
        rows.append(row)
    doc = {"preset": preset, "dtype": shape.dtype, "kv_dtype": shape.cache_dtype, "layers": shape.num_layers,
           "batch": batch, "seq_len": seq_len, "tp": tp, "memory_bytes": budget, "analytic": True,
           "variants": rows}
    if as_json:
        print_json(doc)
        return
    what = shape.dtype if not shape.kv_quantized else f"{shape.kv_dtype} (compute {shape.dtype})"
    per = " per GPU" if tp > 1 else ""
    table = Table(title=f"{preset}: KV cache, {what}, {shape.num_layers} layers, batch {batch} x "
                        f"{seq_len} tokens" + (f", tensor parallel {tp}" if tp > 1 else "")
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
                          "RoPE key, KV heads past G) is counted on every GPU (docs/variants.md §6)[/]")
    if budget is not None:
        err_console.print("[dim]budget counts the KV cache only (no weights or activations)[/]")
