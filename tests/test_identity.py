"""A case's identity: every field that changes the computation, nothing that does not.

Resume, shards and compare join on case ids, so two grid points that compute different
things must never share one, and an id must survive the trip through results.csv.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mlabench import schema
from mlabench.backends import apply_options, served_variants
from mlabench.config import AttentionShape
from mlabench.errors import UsageError
from mlabench.rundir import RunWriter, read_results
from mlabench.suites import Suite, expand


def suite(grid: dict, options: dict | None = None) -> Suite:
    return Suite(name="t", description="", path="", grids=({k: v if isinstance(v, list) else [v]
                                                            for k, v in grid.items()},), options=options or {})


def test_every_shape_field_is_a_key_column() -> None:
    fields = {f.name for f in dataclasses.fields(AttentionShape)} - {"name", "dtype"}
    assert fields <= set(schema.KEY_COLUMNS)
    assert {"dtype", "options"} <= set(schema.KEY_COLUMNS)


def test_grid_over_non_key_fields_no_longer_collapses() -> None:
    """`tiny` with 3 hidden sizes x 2 thetas gave 1 case of 6."""
    grid = {"model": "tiny", "variant": "gqa", "hidden_size": [128, 256, 512], "rope_theta": [1e4, 5e5]}
    cases = expand(suite(grid), "cpu", served_variants()).cases
    assert len(cases) == 6 and len({c.case_id for c in cases}) == 6


@pytest.mark.parametrize("field_values", [
    ("num_layers", [1, 2]), ("rms_norm_eps", [1e-6, 1e-5]), ("rope_scaling_factor", [1.0, 4.0]),
    ("rope_mscale_all_dim", [0.0, 1.0]), ("rope_original_max_position", [64, 128]),
    ("rope_beta_fast", [16.0, 32.0]), ("rope_beta_slow", [1.0, 2.0]),
])
def test_each_shape_field_separates_cases(field_values: tuple[str, list]) -> None:
    name, values = field_values
    cases = expand(suite({"model": "tiny", "variant": "mla-absorbed", name: values}), "cpu",
                   served_variants()).cases
    assert len({c.case_id for c in cases}) == 2


def test_backend_options_are_identity_of_their_backend_only() -> None:
    grid = {"model": "tiny", "variant": "gqa", "backend": ["eager", "compiled"]}
    base = apply_options(expand(suite(grid), "cpu", served_variants()).cases, {})
    tuned = apply_options(expand(suite(grid), "cpu", served_variants()).cases, {"compile_mode": "max-autotune"})
    ids = {c.backend: c.case_id for c in base}
    tuned_ids = {c.backend: c.case_id for c in tuned}
    assert tuned_ids["eager"] == ids["eager"]  # compile_mode does not touch eager
    assert tuned_ids["compiled"] != ids["compiled"]  # a max-autotune candidate is not the default baseline
    assert next(c for c in tuned if c.backend == "compiled").key["options"] == "compile_mode=max-autotune"


def test_unknown_option_is_refused_even_without_its_backend() -> None:
    cases = expand(suite({"model": "tiny", "variant": "gqa"}), "cpu", served_variants()).cases
    with pytest.raises(UsageError, match="unknown backend option 'num_split'"):
        apply_options(cases, {"num_split": 4})


def test_options_are_declared_by_their_backend() -> None:
    """Each option is validated by the check its backend registered, and only that backend's cases carry it."""
    from mlabench.backends import BACKENDS, option_names

    assert set(BACKENDS["triton"].options) == {"block_h", "block_n", "num_warps", "num_stages", "num_splits"}
    assert set(BACKENDS["compiled"].options) == {"compile_mode", "cpp_min_chunk_size"}
    assert not BACKENDS["eager"].options
    assert set(option_names()) == {name for spec in BACKENDS.values() for name in spec.options}
    grid = {"model": "tiny", "variant": "mla-absorbed", "backend": ["eager", "triton"], "mode": "decode"}
    cases = apply_options(expand(suite(grid), "cpu", served_variants()).cases, {"num_splits": 4})
    assert {c.backend: c.options for c in cases} == {"eager": (), "triton": (("num_splits", 4),)}
    with pytest.raises(UsageError, match=r"^num_splits: must be"):
        apply_options(cases, {"num_splits": 0})


def test_irrelevant_axis_is_merged_with_a_message() -> None:
    """num_kv_heads does not apply to mla-absorbed (one latent head): two grid points, one case, said."""
    grid = {"model": "tiny", "variant": ["gqa", "mla-absorbed"], "num_kv_heads": [2, 4]}
    expansion = expand(suite(grid), "cpu", served_variants())
    assert len(expansion.cases) == 3
    assert len(expansion.merged) == 1
    assert "mla-absorbed" in expansion.merged[0] and "num_kv_heads=4" in expansion.merged[0]


def test_case_id_survives_the_csv(tmp_path: Path) -> None:
    """Ids computed in memory equal ids recomputed from the CSV text (floats included)."""
    grid = {"model": "deepseek-v2-lite", "variant": "mla-absorbed", "rope_theta": [10000.0, 12345.5],
            "rms_norm_eps": [1e-6]}
    cases = apply_options(expand(suite(grid, {"sdpa_kernel": "math"}), "cpu", served_variants()).cases,
                          {"sdpa_kernel": "math"})
    writer = RunWriter(tmp_path, resume=False)
    for c in cases:
        writer.append({**c.key, "case_id": "", "status": "skipped"}, [])
    frame = read_results(tmp_path / schema.RESULTS_CSV)
    assert sorted(frame["case_id"]) == sorted(c.case_id for c in cases)
