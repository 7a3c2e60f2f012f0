"""A new variant with a new shape field touches three files: its own module, one import line
in `variants/__init__.py`, and one declaration in `config.py`. Tested on a copy of the package.

The copy gets exactly those three edits: a variant whose KV heads are a new field
`tied_groups` (declared once, with `config.shape_field`). Everything else must follow from
the declaration: `mlabench list` shows the variant and the field, `kv` sizes its cache from
it, a sweep over it records it as a key column (each case its own row, other variants at the
default), `--resume` tells its cases apart, and the report names it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mlabench
from mlabench import schema

NAME = "test-tied-groups"
FIELD = "tied_groups"
DECLARATION = f'    {FIELD}: int = shape_field(1, POSITIVE, "KV groups of the test design", optional=True)\n'
VARIANT = f'''"""A test design: grouped-query attention whose KV groups are the shape field {FIELD}."""

from mlabench.config import AttentionShape
from mlabench.variants.gqa import GroupedQueryAttention
from mlabench.variants.registry import register_variant


@register_variant
class TiedGroups(GroupedQueryAttention):
    name = "{NAME}"
    caches = "K, V for {FIELD} groups"
    cache_formula = "2*{FIELD}*D"
    shape_fields = ("{FIELD}",)

    @classmethod
    def _kv_heads(cls, shape: AttentionShape) -> int:
        return shape.{FIELD}
'''


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package with the three edits a new design with a new field makes."""
    root = tmp_path_factory.mktemp("pkg")
    pkg = root / "mlabench"
    shutil.copytree(Path(mlabench.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    config = pkg / "config.py"
    text = config.read_text()
    marker = "    # A new field goes here"
    assert text.count(marker) == 1
    config.write_text(text.replace(marker, DECLARATION + marker))
    (pkg / "variants" / "tied_groups.py").write_text(VARIANT)
    init = pkg / "variants" / "__init__.py"
    text = init.read_text()
    assert text.count("# isort: on") == 1
    init.write_text(text.replace("# isort: on", "from mlabench.variants import tied_groups  # noqa: F401\n# isort: on"))
    return root


def mlabench_cli(package: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package)}
    done = subprocess.run([sys.executable, "-m", "mlabench", *args], cwd=package, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def rows(run: Path) -> list[dict[str, str]]:
    with (run / schema.RESULTS_CSV).open() as f:
        return list(csv.DictReader(f))


def test_listed_with_its_field(package: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import mlabench; print(mlabench.__file__)"], cwd=package,
                           env={**os.environ, "PYTHONPATH": str(package)}, capture_output=True, text=True)
    assert where.stdout.startswith(str(package))  # the CLI below runs the edited copy
    doc = json.loads(mlabench_cli(package, "list", "--json").stdout)
    row = next(v for v in doc["variants"] if v["name"] == NAME)
    assert row["shape_fields"] == [FIELD] and row["elements_per_token_per_layer"] == f"2*{FIELD}*D"
    assert all(p[FIELD] == 1 for p in doc["presets"])  # every preset at the declared default


def test_kv_sizes_the_cache_from_the_field(package: Path) -> None:
    per_token = {}
    for groups in (2, 4):
        done = mlabench_cli(package, "kv", "--preset", "llama-3-8b", "--variant", NAME, "--set", f"{FIELD}={groups}",
                            "--json")
        per_token[groups] = json.loads(done.stdout)["variants"][0]["bytes_per_token_per_layer"]
    assert per_token == {2: 2 * 2 * 128 * 2, 4: 2 * 4 * 128 * 2}  # K and V, G groups, D = 128, bf16


def test_sweep_resume_and_report_carry_the_field(package: Path, tmp_path: Path) -> None:
    suite = tmp_path / "tied.toml"
    suite.write_text(f'name = "tied"\n[settings]\nbudget_s = 0.01\nwarmup_s = 0.0\nmin_samples = 3\nmax_samples = 3\n'
                     f'[[grid]]\nmodel = "tiny"\nvariant = ["{NAME}"]\nbackend = ["eager"]\nmode = ["decode"]\n'
                     f'batch = [2]\nseq_len = [32]\n{FIELD} = [1, 2]\n'
                     f'[[grid]]\nmodel = "tiny"\nvariant = ["gqa"]\nbackend = ["eager"]\nmode = ["decode"]\n'
                     f'batch = [2]\nseq_len = [32]\n')
    run = tmp_path / "run"
    mlabench_cli(package, "sweep", "--suite", str(suite), "--out", str(run), "--no-probe", "--no-report")
    first = rows(run)
    tied = {r[FIELD]: r for r in first if r["variant"] == NAME}
    assert set(tied) == {"1", "2"} and all(r["status"] == "ok" for r in first)
    for groups, row in tied.items():  # batch 2 x 32 slots x K,V x G groups x D = 32 x fp32
        assert int(row["kv_cache_bytes"]) == int(row["kv_cache_bytes_measured"]) == 2 * 32 * 2 * int(groups) * 32 * 4
        assert row["num_kv_heads"] == groups
    assert [r[FIELD] for r in first if r["variant"] == "gqa"] == ["1"]  # a design that does not read it: the default
    assert tied["1"]["case_id"] != tied["2"]["case_id"]

    # A sweep killed before its last case: resume must measure that case (and only it) again.
    last = next(r for r in first if r["variant"] == NAME and r[FIELD] == "2")
    kept = [r for r in first if r is not last]
    with (run / schema.RESULTS_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(first[0]))
        writer.writeheader()
        writer.writerows(kept)
    mlabench_cli(package, "sweep", "--suite", str(suite), "--out", str(run), "--no-probe", "--no-report", "--resume")
    resumed = rows(run)
    assert sorted((r["variant"], r[FIELD]) for r in resumed) == sorted((r["variant"], r[FIELD]) for r in first)
    with (run / schema.SAMPLES_CSV).open() as f:
        samples = [s["case_id"] for s in csv.DictReader(f)]
    assert samples.count(tied["1"]["case_id"]) == 3  # finished: not measured again
    assert samples.count(last["case_id"]) >= 3  # measured again on resume

    mlabench_cli(package, "report", str(run))
    assert FIELD in (run / schema.REPORT_HTML).read_text()
