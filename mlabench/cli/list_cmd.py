"""`mlabench list`: variants, backends (with availability and why not), suites, presets."""

from __future__ import annotations

from typing import Any

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
                      "fp8_cache": cls.fp8_cache}
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
        doc["presets"].append({"name": name, "layers": sh.num_layers, "hidden_size": sh.hidden_size,
                               "num_heads": sh.num_heads, "num_kv_heads": sh.kv_heads, "head_dim": sh.head_dim,
                               "q_lora_rank": sh.q_lora_rank, "kv_lora_rank": sh.kv_lora_rank,
                               "num_latent_heads": sh.num_latent_heads, "rope_head_dim": sh.rope_head_dim,
                               "v_head_dim": sh.value_dim})
    if as_json:
        print_json(doc)
        return
    _render(doc)


def _render(doc: dict[str, Any]) -> None:
    t = Table(title="variants", title_justify="left", header_style="bold")
    for col in ("name", "caches", "elements / token / layer", "decode", "FP8 cache (kv_dtype fp8_e4m3, fp8_e5m2)"):
        t.add_column(col, overflow="fold")
    for v in doc["variants"]:
        t.add_row(v["name"], v["caches"], v["elements_per_token_per_layer"], "yes" if v["decode"] else "no",
                  v["fp8_cache"])
    out_console.print(t)
    t = Table(title=f"backends on {doc['device']}", title_justify="left", header_style="bold")
    for col in ("name", "available", "modes", "serves", "options (--option NAME=VALUE)", "description / reason"):
        t.add_column(col, overflow="fold")
    for b in doc["backends"]:
        serves = "all" if len(b["variants"]) == len(doc["variants"]) else ", ".join(b["variants"])
        t.add_row(b["name"], "[green]yes[/]" if b["available"] else "[yellow]no[/]", ", ".join(b["modes"]), serves,
                  ", ".join(b["options"]) or "-",
                  b["description"] if b["available"] else f"[yellow]{b['reason']}[/]")
    out_console.print(t)
    t = Table(title="suites", title_justify="left", header_style="bold")
    t.add_column("name")
    t.add_column("description", overflow="fold")
    for s in doc["suites"]:
        t.add_row(s["name"], s["description"])
    out_console.print(t)
    t = Table(title="presets", title_justify="left", header_style="bold")
    cols = ("name", "layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "q_lora_rank", "kv_lora_rank",
            "num_latent_heads", "rope_head_dim", "v_head_dim")
    short = ("name", "L", "d", "H", "G", "D/d_n", "d_q", "d_c", "h_c", "d_r", "d_v")  # docs/variants.md's symbols
    for col, label in zip(cols, short, strict=True):
        t.add_column(label, justify="left" if col == "name" else "right")
    for p in doc["presets"]:
        t.add_row(*(str(p[c]) for c in cols))
    out_console.print(t)
