"""`mlabench list`: variants, backends (with availability and why not), suites, presets."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from mlabench.cli.common import DeviceOpt, JsonOpt, out_console, print_json


def list_(
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """List variants, backends (available here or why not), suites and model presets."""
    from mlabench.backends import BACKENDS
    from mlabench.backends.registry import served_variants
    from mlabench.config import PRESETS
    from mlabench.measure.envinfo import resolve_device
    from mlabench.suites import available_suites, load_suite
    from mlabench.variants import VARIANT_CLASSES

    dev = resolve_device(device)
    doc: dict[str, Any] = {
        "device": str(dev),
        "variants": [{"name": n, "family": cls.family, "caches": cls.caches,
                      "elements_per_token_per_layer": cls.cache_formula, "decode": cls.supports_decode,
                      "fp8_cache": cls.fp8_cache, "shape_fields": list(cls.shape_fields)}
                     for n, cls in VARIANT_CLASSES.items()],
        "backends": [],
        "suites": [],
        "presets": [],
    }
    served = served_variants()
    for spec in BACKENDS.values():
        reason = spec.unavailable(dev)
        doc["backends"].append({"name": spec.name, "available": reason is None, "reason": reason,
                                "fused": spec.fused, "modes": list(spec.modes), "variants": list(served[spec.name]),
                                "options": list(spec.options), "description": spec.description})
    for name, path in available_suites().items():
        try:
            description = load_suite(str(path)).description
        except Exception as exc:  # a broken suite file is listed with its problem, not fatal here
            description = f"(invalid: {exc})"
        doc["suites"].append({"name": name, "path": str(path), "description": description})
    for name, sh in PRESETS.items():
        doc["presets"].append({"name": name, "layers": sh.num_layers, **sh.key_values()})
    if as_json:
        print_json(doc)
        return
    _render(doc)


def fitted_table(title: str, columns: dict[str, dict[str, Any]], rows: list[list[str]], optional: tuple[str, ...],
                 width: int) -> Table:
    """A table of `columns` (name -> rich column options) that reads at `width`: the `optional`
    columns give way, in order, while a word would break or a row would wrap past two lines."""
    names = list(columns)

    def build(keep: list[str]) -> Table:
        table = Table(title=title, title_justify="left", header_style="bold")
        for name in keep:
            table.add_column(name, **columns[name])
        for row in rows:
            table.add_row(*(cell for name, cell in zip(names, row, strict=True) if name in keep))
        return table

    keep = list(names)
    console = Console(width=width)
    for name in optional:
        table = build(keep)
        lines = len(console.render_lines(table, console.options.update(width=width), pad=False))
        if console.measure(table).minimum <= width and lines <= 2 * len(rows) + 6:
            break
        keep.remove(name)
    table = build(keep)
    left_out = [n for n in names if n not in keep]
    if left_out:
        table.caption = f"left out at {width} columns: {', '.join(left_out)} (see a wider terminal or --json)"
        table.caption_justify = "left"
    return table


def _render(doc: dict[str, Any]) -> None:
    width = out_console.width
    fp8 = "FP8 cache (kv_dtype fp8_e4m3, fp8_e5m2)"
    out_console.print(fitted_table(
        "variants", {"name": {"no_wrap": True}, "caches": {}, "elements / token / layer": {}, "decode": {}, fp8: {}},
        [[v["name"], v["caches"], v["elements_per_token_per_layer"], "yes" if v["decode"] else "no", v["fp8_cache"]]
         for v in doc["variants"]], (fp8, "elements / token / layer", "decode"), width))
    options = "options (--option NAME=VALUE)"
    rows = []
    for b in doc["backends"]:
        serves = "all" if len(b["variants"]) == len(doc["variants"]) else ", ".join(b["variants"])
        about = b["description"] if b["available"] else f"[yellow]{b['reason']}[/]"
        rows.append([b["name"], "[green]yes[/]" if b["available"] else "[yellow]no[/]", ", ".join(b["modes"]), serves,
                     ", ".join(b["options"]) or "-", about])
    out_console.print(fitted_table(
        f"backends on {doc['device']}", {"name": {"no_wrap": True}, "available": {}, "modes": {}, "serves": {},
                                         options: {}, "description / reason": {}},
        rows, ("modes", options, "serves"), width))
    out_console.print(fitted_table("suites", {"name": {"no_wrap": True}, "description": {}},
                                   [[s["name"], s["description"]] for s in doc["suites"]], (), width))
    cols = ("name", "layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "q_lora_rank", "kv_lora_rank",
            "num_latent_heads", "rope_head_dim", "v_head_dim")
    short = ("name", "L", "d", "H", "G", "D/d_n", "d_q", "d_c", "h_c", "d_r", "d_v")  # the symbols of docs/variants.md
    # Numbers never wrap or shorten: no rules, so eleven columns fit 80 characters.
    t = Table(title="presets", title_justify="left", header_style="bold", box=None, pad_edge=False)
    for col, label in zip(cols, short, strict=True):
        t.add_column(label, justify="left" if col == "name" else "right", no_wrap=True)
    for p in doc["presets"]:
        t.add_row(*(str(p[c]) for c in cols))
    out_console.print(t)
