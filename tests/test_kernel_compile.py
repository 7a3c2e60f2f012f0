"""Offline sm_90a compile of the MLA decode kernel: every launcher-picked config must compile clean.

No GPU is needed: `mlabench.kernels.offline_compile` lowers the split kernel for Hopper
(sm_90a) with the ptxas inside the triton wheel and reads registers and spills from the
cubin, shared memory from Triton's metadata. It runs in a subprocess without
TRITON_INTERPRET (conftest.py sets it on machines without CUDA, and an interpreted kernel
cannot be lowered), once for the whole module. Compiles land in Triton's on-disk cache, so
only the first run after a kernel change pays for them (about a minute on two cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from mlabench.kernels import offline_compile as oc  # noqa: E402
from mlabench.kernels.mla_decode_launch import ctas_per_sm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO / "mlabench" / "kernels" / "NOTES.md"
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_MISSING = [name for name in ("ptxas", "cuobjdump") if not (_BIN / name).exists()]
pytestmark = [
    pytest.mark.skipif(
        bool(_MISSING), reason=f"the triton wheel ships no {', '.join(_MISSING)} in {_BIN.name}/ (non-NVIDIA build)"
    ),
    # The compile runs two jobs at once and its module fixture must run once: one pytest-xdist
    # worker takes this module, in turn with the other process-heavy modules.
    pytest.mark.xdist_group("processes"),
]


def _key(r: dict) -> tuple:
    return (r["dims"], r["dtype"], r["block_h"], r["block_n"], r["num_warps"], r["num_stages"], r["write_final"],
            r["page_size"])


@pytest.fixture(scope="module")
def results() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "mlabench.kernels.offline_compile", "--json", "--jobs", "2"],
        capture_output=True, text=True, timeout=900, cwd=REPO, env=env,
    )
    # Exit status 1 only means some config is not clean; the tests below say which.
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_every_auto_config_was_compiled(results: list[dict]) -> None:
    want = {(dims, dtype, cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages, final, page)
            for cfg, dims, dtype, final, page in oc.auto_jobs()}
    assert {_key(r) for r in results} == want
    assert any(r["page_size"] for r in results)  # the block-table path is compiled too
    assert all(r["ptx_target"] == "sm_90a" for r in results), {r["ptx_target"] for r in results}


def test_no_register_spills(results: list[dict]) -> None:
    spilling = [(_key(r), r["n_regs"], r["spill_bytes"]) for r in results if r["spill_bytes"] > 0]
    assert not spilling, f"(config, registers, spill bytes) that spill on sm_90a: {spilling}"
    assert all(0 < r["n_regs"] <= 255 for r in results)


def test_shared_memory_fits_hopper(results: list[dict]) -> None:
    over = [(_key(r), r["shared"]) for r in results if r["shared"] > oc.SM90_MAX_SHARED]
    assert not over, f"configs above the {oc.SM90_MAX_SHARED}-byte (227 KiB) per-block limit: {over}"


def test_split_heuristic_occupancy_holds(results: list[dict]) -> None:
    # default_num_splits plans waves of ctas_per_sm(num_warps) resident CTAs per SM; the
    # compiled register and shared-memory footprints must allow that many.
    short = [(_key(r), r["resident_ctas"], ctas_per_sm(r["num_warps"]))
             for r in results if r["resident_ctas"] < ctas_per_sm(r["num_warps"])]
    assert not short, f"(config, resident CTAs, planned CTAs) where the plan does not fit: {short}"


def test_notes_table_is_current(results: list[dict]) -> None:
    # NOTES.md records this table; with the triton version it names, it must match exactly.
    text = NOTES.read_text()
    version = re.search(r"offline compile, triton ([\d.]+)", text)
    assert version, "NOTES.md does not name the triton version of its compile table"
    if version.group(1) != triton.__version__:
        pytest.skip(f"NOTES.md's table is from triton {version.group(1)}, this is {triton.__version__}")
    table = oc.markdown_table([oc.CompileResult(**{k: v for k, v in r.items() if k not in ("ok", "resident_ctas")})
                               for r in results])
    assert table in text, f"NOTES.md's compile table is stale; regenerate it:\n{table}"


def test_refuses_an_interpreted_kernel() -> None:
    # In this process conftest.py may have set TRITON_INTERPRET before triton was imported.
    from mlabench.kernels import mla_decode

    if not mla_decode.INTERPRETED:
        pytest.skip("kernels are compiled in this process (CUDA present or TRITON_INTERPRET unset)")
    cfg = next(iter(oc.auto_configs()))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        oc.compile_config(cfg, "small", "bf16", False)


def test_sparse_path_compiles_clean_for_sm90a() -> None:
    """The index-gathering path (dsa decode) at DeepSeek-V3.2 dims, split and single-split, with the
    configuration the launcher picks: sm_90a, no register spills, shared memory within Hopper's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "mlabench.kernels.offline_compile", "--sparse", "--json", "--jobs", "2"],
        capture_output=True, text=True, timeout=900, cwd=REPO, env=env,
    )
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    assert len(results) == 2 and {r["write_final"] for r in results} == {False, True}
    for r in results:
        assert r["ptx_target"] == "sm_90a"
        assert r["spill_bytes"] == 0 and 0 < r["n_regs"] <= 255, r
        assert r["shared"] <= oc.SM90_MAX_SHARED, r
