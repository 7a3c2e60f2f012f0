"""Property-based bad input: generated suite files, axis strings and flag values, fed to the parsers
and to the CLI in this process. Whatever is generated, the answer is a result (exit 0) or exactly
one `mlabench: error:` line with exit 2: never a traceback, another exit code, or a hang.

The examples are derandomized (the same ones on every run, so CI cannot turn red by chance) and
bounded in number and size: a generated axis holds at most two values, so a grid stays small enough
to plan in well under the per-example deadline, which is there to catch a hang, not to time anything.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_run import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlabench.config import PRESETS
from mlabench.context import MAX_CONTEXT, parse_context
from mlabench.errors import UsageError
from mlabench.executors.slurm import VARIABLES, slurm_shard
from mlabench.suites import CASE_AXES, load_suite
from mlabench.variants.registry import variant_names

PROPERTY = settings(max_examples=60, deadline=timedelta(seconds=60), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE_SUITE = """
name = "prop"
[settings]
budget_s = 0.01
[[grid]]
model = "tiny"
variant = ["mha", "mla-absorbed"]
backend = "eager"
mode = "decode"
seq_len = [16, 32]
"""

# Values a parser meets: plausible names and numbers (so some inputs get deep), edge numbers, junk.
NAMES = st.sampled_from(["tiny", "deepseek-v3", "eager", "sdpa", "decode", "prefill", "auto", "float32", "bfloat16",
                         "fp8_e4m3", "step", "core", "contiguous", "paged:16", "paged:0", "nope", "", " ",
                         *variant_names()])
SPECS = st.one_of(
    st.builds("uniform:{}-{}".format, st.integers(-5, 10**25), st.integers(-5, 10**25)),
    st.builds(lambda low, wide: f"uniform:{low}-{low + wide}", st.integers(1, 2**70), st.integers(0, 2**70)),
    st.builds("lognormal:median={},sigma={}".format, st.floats(allow_nan=True), st.floats(allow_nan=True)),
    st.builds(lambda xs: "list:" + "/".join(map(str, xs)), st.lists(st.integers(-3, 10**25), min_size=0, max_size=4)),
)
INTS = st.one_of(st.integers(1, 64), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**63, 2**64]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(NAMES, INTS, FLOATS, st.booleans(), SPECS, st.text(max_size=12))
AXIS_KEYS = st.sampled_from([*CASE_AXES, "num_kv_heads", "kv_lora_rank", "head_dim", "rope_theta", "num_heads",
                             "kv_dtype", "suite", "bogus"])
# Per axis, values that mostly make sense, so that generated suites get past the first check.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["tiny", *PRESETS]),
    "variant": st.sampled_from(variant_names()),
    "backend": st.sampled_from(["eager", "sdpa", "compiled", "triton", "flashmla"]),
    "mode": st.sampled_from(["decode", "prefill"]),
    "batch": st.integers(1, 8),
    "seq_len": st.one_of(st.integers(1, 256),
                         st.builds("uniform:{}-{}".format, st.integers(1, 64), st.integers(64, 256)),
                         st.builds("lognormal:median={},sigma={}".format, st.integers(1, 200), st.floats(0, 2)),
                         st.lists(st.integers(1, 256), min_size=1, max_size=4).map(
                             lambda xs: "list:" + "/".join(map(str, xs)))),
    "q_len": st.integers(1, 4),
    "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
    "scope": st.sampled_from(["step", "core"]),
    "cache_layout": st.sampled_from(["contiguous", "paged:16", "paged"]),
    "tp": st.integers(1, 4),
    "kv_dtype": st.sampled_from(["auto", "fp8_e4m3", "fp8_e5m2", "float32"]),
    "num_kv_heads": st.integers(1, 8),
    "kv_lora_rank": st.integers(1, 64),
    "head_dim": st.integers(1, 64),
    "num_heads": st.integers(1, 16),
    "rope_theta": FLOATS,
}


def rarely(junk: st.SearchStrategy[Any], usual: st.SearchStrategy[Any], one_in: int) -> st.SearchStrategy[Any]:
    """`junk` once in `one_in` draws, else `usual`: a suite with a wrong value in every axis stops at the first."""
    return st.integers(1, one_in).flatmap(lambda i: junk if i == 1 else usual)


def axis_value(key: str) -> st.SearchStrategy[Any]:
    good = PLAUSIBLE.get(key, SCALARS)
    return rarely(st.one_of(SCALARS, st.lists(SCALARS, max_size=2)),
                  st.one_of(good, st.lists(good, min_size=1, max_size=2)), 16)


AXES = st.fixed_dictionaries({}, optional={k: axis_value(k) for k in PLAUSIBLE})
GRIDS = st.lists(st.fixed_dictionaries({"model": axis_value("model"), "variant": axis_value("variant")},
                                       optional={k: axis_value(k) for k in PLAUSIBLE if k not in ("model", "variant")}),
                 min_size=1, max_size=2)
SETTING_KEYS = st.sampled_from(["budget_s", "warmup_s", "min_samples", "max_samples", "threads", "seed",
                                "cuda_graph", "accuracy", "timeout_s", "rounds", "tp", "bogus"])
JUNK_GRIDS = st.one_of(st.lists(st.dictionaries(AXIS_KEYS, SCALARS, max_size=4), max_size=2), SCALARS)
# Each part is usually well formed and sometimes wrong (a scalar for a table, a stray key), so one
# wrong part at a time is reached past the checks before it.
SUITES = st.tuples(
    st.fixed_dictionaries({"grid": rarely(JUNK_GRIDS, GRIDS, 8)}, optional={
        "name": rarely(SCALARS, st.sampled_from(["ok", "a.b-c_d", "../x", ".."]), 4),
        "description": SCALARS,
        "settings": rarely(SCALARS, rarely(st.dictionaries(SETTING_KEYS, SCALARS, max_size=3),
                                           st.just({"budget_s": 0.01}), 3), 5),
        "defaults": rarely(SCALARS, AXES, 5),
        "options": rarely(SCALARS, st.dictionaries(st.sampled_from(["compile_mode", "sdpa_kernel", "num_splits", "x"]),
                                                   SCALARS, max_size=2), 5),
        "cpu": rarely(SCALARS, AXES, 5),
    }),
    rarely(st.dictionaries(st.sampled_from(["bogus", "grids", "setting"]), SCALARS, min_size=1, max_size=1),
           st.just({}), 10),
).map(lambda parts: {**parts[0], **parts[1]})


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string, or close enough to be refused as TOML


def to_toml(doc: dict[str, Any]) -> str:
    """The generated document as TOML: scalars first, then tables, then the grid's array of tables."""
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)
             and not (k == "grid" and isinstance(v, list))]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines += [f"[{key}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    if isinstance(doc.get("grid"), list):
        for table in doc["grid"]:
            lines += ["[[grid]]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def assert_answered(code: int, err: str) -> None:
    """A result, or one error line with exit 2; never a traceback."""
    assert "Traceback" not in err, err
    if code != 0:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("mlabench: error: "), (code, err)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("properties")
    (d / "prop.toml").write_text(BASE_SUITE)
    return d


@PROPERTY
@given(doc=SUITES)
def test_generated_suite_files(doc: dict[str, Any], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "generated.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    code, _, err = run_cli(["sweep", "--suite", str(path), "--dry-run", "--device", "cpu"], capsys)
    assert_answered(code, err)


@PROPERTY
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_suite_text(text: str | bytes, workdir: Path) -> None:
    path = workdir / "raw.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_suite(str(path))
    except UsageError:
        pass


TOKENS = st.one_of(NAMES, INTS.map(str), FLOATS.map(str), SPECS, st.text(max_size=8))


def comma_list(token: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return rarely(st.text(max_size=20), st.lists(token, min_size=1, max_size=3).map(",".join), 5)


NUMBERS = st.one_of(INTS.map(str), FLOATS.map(str), st.sampled_from(["1e309", "-0", "0x10", "1_000", " 3 "]))
# Each flag with values of its own kind (most of them plausible) or anything.
AXIS_FLAGS: dict[str, st.SearchStrategy[str]] = {
    **{f: comma_list(NAMES) for f in ("--model", "--variant", "--backend", "--mode", "--dtype", "--scope")},
    **{f: comma_list(NUMBERS) for f in ("--batch", "--q-len", "--kv-lora-rank", "--num-kv-heads")},
    "--seq-len": comma_list(rarely(NUMBERS, SPECS, 4)),
    "--shard": st.one_of(st.builds("{}/{}".format, NUMBERS, NUMBERS), st.just("auto"), st.text(max_size=8)),
    "--set": st.one_of(st.builds("{}={}".format, AXIS_KEYS, comma_list(TOKENS)), st.text(max_size=12)),
}


def flags_from(table: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """One to three flags of `table`, each with a value drawn for it, as command-line words."""
    one = st.sampled_from(sorted(table)).flatmap(lambda flag: table[flag].map(lambda value: [flag, value]))
    return st.lists(one, min_size=1, max_size=3).map(lambda pairs: [w for pair in pairs for w in pair])


@PROPERTY
@given(args=flags_from(AXIS_FLAGS))
def test_generated_axis_overrides(args: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--suite", str(workdir / "prop.toml"), "--dry-run", "--device", "cpu", *args],
                           capsys)
    assert_answered(code, err)


@PROPERTY
@given(value=comma_list(rarely(NUMBERS, SPECS, 8)),
       batch=comma_list(rarely(NUMBERS, st.integers(1, 2**17).map(str), 8)))
def test_generated_seq_len_values(value: str, batch: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--suite", str(workdir / "prop.toml"), "--dry-run", "--device", "cpu",
                            "--seq-len", value, "--batch", batch], capsys)
    assert_answered(code, err)


SETTING_FLAGS: dict[str, st.SearchStrategy[str]] = {
    **{f: NUMBERS for f in ("--budget", "--warmup", "--min-samples", "--max-samples", "--timeout", "--threads",
                            "--seed", "--rounds", "--tp")},
    **{f: st.one_of(NAMES, st.text(max_size=8)) for f in ("--compile-mode", "--sdpa-kernel")},
    "--option": st.builds("{}={}".format, st.sampled_from(["compile_mode", "sdpa_kernel", "num_splits", "x", ""]),
                          TOKENS),
}


@PROPERTY
@given(args=flags_from(SETTING_FLAGS))
def test_generated_setting_flags(args: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["sweep", "--suite", str(workdir / "prop.toml"), "--dry-run", "--device", "cpu", *args],
                           capsys)
    assert_answered(code, err)


KV_FLAGS: dict[str, st.SearchStrategy[str]] = {
    **{f: st.one_of(NAMES, st.text(max_size=8)) for f in ("--model", "--dtype", "--kv-dtype", "--cache-layout")},
    **{f: NUMBERS for f in ("--seq-len", "--batch", "--tp")},
    "--memory": st.one_of(st.builds("{}{}".format, NUMBERS, st.sampled_from(["", "GiB", "GB", "MiB", "x"])),
                          st.text(max_size=8)),
    "--variant": comma_list(NAMES),
    "--set": AXIS_FLAGS["--set"],
}


@PROPERTY
@given(args=flags_from(KV_FLAGS))
def test_generated_kv_flags(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["kv", *args], capsys)
    assert_answered(code, err)


@PROPERTY
@given(text=st.one_of(SPECS, st.text(max_size=40)), batch=st.integers(1, 64))
def test_a_context_spec_parses_to_bounded_lengths_or_is_refused(text: str, batch: int) -> None:
    try:
        spec = parse_context(text)
    except UsageError:
        return
    lengths = spec.lengths(batch)
    assert len(lengths) == batch and all(1 <= n <= MAX_CONTEXT for n in lengths)
    assert parse_context(spec.text) == spec  # the canonical text names the same distribution


@PROPERTY
@given(env=st.fixed_dictionaries({}, optional={v: st.one_of(INTS.map(str), st.text(max_size=6))
                                               for v in (*VARIABLES, "SLURM_ARRAY_TASK_STEP")}))
def test_slurm_variables_give_a_slice_or_one_message(env: dict[str, str]) -> None:
    try:
        k, n = slurm_shard(env)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert 1 <= k <= n
