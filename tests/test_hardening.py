"""Nothing hangs, nothing mixes, every bad input is one line.

Every bad input below exits 2 (or 3 where the README says: not comparable) with
exactly one `mlabench: error:` line on stderr and no traceback, before any work.
Inputs that used to hang or crash the interpreter run in a subprocess with a
timeout, so a regression fails the test instead of stalling the suite. The rest:
the run-directory lock, resume refusing another run, the per-case wall limit,
SIGTERM, write failures, merge's shard and suite checks, torn rows, and compare's
missing-case share.
"""

from __future__ import annotations

import csv
import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_run import answers_in_child, assert_one_error_line, run_cli
from suite_text import two_decode_cases
from synthetic_runs import make_meta, make_run

from mlabench import schema
from mlabench.rundir import RunWriter

SUITE = two_decode_cases("hard")
GRID = dict(variants=("mha", "mqa"), backends=("eager",), modes=("decode",), seq_lens=(512, 1024), batches=(1,),
            ranks=(128,), failures=False, claims=False)


def finished_meta(suite: str = "decode", **extra: object) -> dict:
    return {**make_meta(suite=suite), "finished_utc": "2025-01-01T00:01:00Z", "interrupted": False, **extra}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every file the bad inputs point at, made once."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "suite.toml").write_text(SUITE)
    (d / "afile").write_text("not a directory\n")
    (d / "binary.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (d / "rope_abc.toml").write_text(SUITE.replace('seq_len = [16, 32]', 'seq_len = [16]\nrope_theta = ["abc"]'))
    (d / "escape.toml").write_text(SUITE.replace('name = "hard"', 'name = "../../../x"'))
    (d / "dots.toml").write_text(SUITE.replace('name = "hard"', 'name = ".."'))
    (d / "nan_budget.toml").write_text(SUITE.replace("budget_s = 0.002", "budget_s = nan"))
    (d / "bool_threads.toml").write_text(SUITE.replace("threads = 1", "threads = true"))

    good = make_run(d / "good", meta=finished_meta(), **GRID)
    header = (good / schema.RESULTS_CSV).read_text().splitlines(keepends=True)[0]
    rows = list(csv.DictReader((good / schema.RESULTS_CSV).open(newline="")))

    def variant(name: str, edit: object) -> None:
        run = d / name
        shutil.copytree(good, run)
        edit(run)  # type: ignore[operator]

    def with_rows(name: str, change: object) -> None:
        def edit(run: Path) -> None:
            changed = [dict(r) for r in rows]
            change(changed)  # type: ignore[operator]
            with (run / schema.RESULTS_CSV).open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(schema.COLUMNS))
                w.writeheader()
                w.writerows(changed)
        variant(name, edit)

    variant("binary_csv", lambda r: (r / schema.RESULTS_CSV).write_bytes(b"\x00\x01\x02garbage\xff"))
    variant("quote_csv", lambda r: (r / schema.RESULTS_CSV).write_text(header + '"unterminated,tiny\n'))
    variant("extra_field", lambda r: (r / schema.RESULTS_CSV).write_text(
        (r / schema.RESULTS_CSV).read_text().rstrip("\n") + ",surplus\n"))
    variant("torn", lambda r: (r / schema.RESULTS_CSV).write_text(
        (r / schema.RESULTS_CSV).read_text() + "decode,deepseek-v2-lite,mha,eag"))
    variant("bad_json", lambda r: (r / schema.META_JSON).write_text("{not json"))
    variant("binary_json", lambda r: (r / schema.META_JSON).write_bytes(b"\xff\xfe\x00binary"))
    variant("list_json", lambda r: (r / schema.META_JSON).write_text("[1, 2]"))
    variant("bad_samples", lambda r: (r / schema.SAMPLES_CSV).write_text("case_id,sample,latency_ms\nx,0,fast\n"))
    with_rows("unknown_status", lambda rs: rs[0].update(status="exploded"))
    with_rows("nonnumeric_latency", lambda rs: rs[0].update(latency_ms="fast"))
    variant("unfinished", lambda r: (r / schema.META_JSON).write_text(json.dumps(
        {**finished_meta(), "interrupted": True})))

    # Shards of one split, and a second suite, as disjoint case sets.
    make_run(d / "shard1", meta=finished_meta(shard="1/3"), **{**GRID, "variants": ("mha",)})
    make_run(d / "shard3", meta=finished_meta(shard="3/3"), **{**GRID, "variants": ("mqa",)})
    make_run(d / "other_suite", meta=finished_meta(suite="prefill"), suite="prefill", **GRID)
    return d


S = "{d}/suite.toml"
# (args, needle in the message); {d} is the inputs directory, {t} this test's own empty directory.
BAD_INPUTS: list[tuple[list[str], str]] = [
    # sweep settings: finite and bounded
    (["sweep", "--suite", S, "--budget", "-1"], "budget_s"),
    (["sweep", "--suite", S, "--warmup", "-0.5"], "warmup_s"),
    (["sweep", "--suite", S, "--min-samples", "0"], "min_samples"),
    (["sweep", "--suite", S, "--max-samples", "1000000"], "max_samples"),
    (["sweep", "--suite", S, "--min-samples", "50", "--max-samples", "5"], "exceeds max_samples"),
    (["sweep", "--suite", S, "--timeout", "nan"], "timeout_s"),
    (["sweep", "--suite", S, "--timeout", "0"], "timeout_s"),
    (["sweep", "--suite", S, "--seed", "-1"], "seed"),
    (["sweep", "--suite", "{d}/nan_budget.toml"], "budget_s"),
    (["sweep", "--suite", "{d}/bool_threads.toml"], "threads"),
    # output paths, before any work
    (["sweep", "--suite", S, "--out", "{d}/afile"], "not a directory"),
    (["sweep", "--suite", S, "--out", "{d}/afile/run"], "which is a file"),
    (["sweep", "--suite", S, "--out", "/dev/null"], "not a directory"),
    # shape field types
    (["sweep", "--suite", S, "--set", "rope_theta=abc"], "rope_theta"),
    (["sweep", "--suite", S, "--set", "rms_norm_eps=tiny"], "rms_norm_eps"),
    (["sweep", "--suite", S, "--set", "rope_theta=nan"], "rope_theta"),
    (["sweep", "--suite", S, "--set", "rope_theta=inf"], "rope_theta"),
    (["sweep", "--suite", S, "--set", "num_heads=2.5"], "num_heads"),
    (["sweep", "--suite", S, "--set", "oops"], "--set"),
    (["sweep", "--suite", "{d}/rope_abc.toml"], "rope_theta"),
    (["sweep", "--suite", "{d}/binary.toml"], "UTF-8"),
    # suite names never steer paths
    (["sweep", "--suite", "{d}/escape.toml"], "name '../../../x'"),
    (["sweep", "--suite", "{d}/dots.toml"], "name '..'"),
    # small ones
    (["sweep", "--suite", S, "--device", "cpu:99"], "cpu:99"),
    (["sweep", "--suite", S, "--shard", "1/1000"], "empty"),
    (["sweep", "--suite", S, "--shard", "0/2"], "--shard"),
    (["sweep", "--suite", S, "--variant", "bogus"], "bogus"),
    # typer/click usage errors: one line too
    (["sweep", "--no-such-flag"], "--no-such-flag"),
    (["sweep", "--threads", "many"], "--threads"),
    (["sweep", "--budget"], "--budget"),
    (["no-such-command"], "no-such-command"),
    (["--no-such-flag"], "--no-such-flag"),
    # run
    (["run", "--budget", "-1", "--device", "cpu"], "budget_s"),
    (["run", "--variant", "bogus", "--device", "cpu"], "--variant: unknown variant 'bogus'"),
    (["run", "--device", "cpu:99"], "cpu:99"),
    (["run", "--set", "rope_theta=abc", "--device", "cpu"], "rope_theta"),
    # kv, env
    (["kv", "--memory", "nan"], "--memory"),
    (["kv", "--memory", "inf"], "--memory"),
    (["kv", "--memory", "-5GiB"], "--memory"),
    (["kv", "--set", "rope_theta=abc"], "rope_theta"),
    (["kv", "--set", "rms_norm_eps=tiny"], "rms_norm_eps"),
    (["env", "--dtype", "int3", "--device", "cpu"], "int3"),
    (["env", "--device", "cpu:99"], "cpu:99"),
    # merge: through the validated reader, one run only unless asked
    (["merge", "{d}/good", "{d}/binary_csv", "--out", "{t}/m", "--no-report"], "binary"),
    (["merge", "{d}/quote_csv", "--out", "{t}/m", "--no-report"], "results.csv"),
    (["merge", "{d}/extra_field", "--out", "{t}/m", "--no-report"], "fields"),
    (["merge", "{d}/torn", "--out", "{t}/m", "--no-report"], "torn"),
    (["merge", "{d}/unknown_status", "--out", "{t}/m", "--no-report"], "unknown status"),
    (["merge", "{d}/nonnumeric_latency", "--out", "{t}/m", "--no-report"], "not a number"),
    (["merge", "{d}/bad_json", "--out", "{t}/m", "--no-report"], "corrupt JSON"),
    (["merge", "{d}/binary_json", "--out", "{t}/m", "--no-report"], "corrupt JSON"),
    (["merge", "{d}/list_json", "--out", "{t}/m", "--no-report"], "JSON object"),
    (["merge", "{d}/bad_samples", "--out", "{t}/m", "--no-report"], "samples.csv"),
    (["merge", "{d}/shard1", "{d}/shard3", "--out", "{t}/m", "--no-report"], "missing 2/3"),
    (["merge", "{d}/good", "{d}/other_suite", "--out", "{t}/m", "--no-report"], "different suites"),
    (["merge", "{d}/unfinished", "--out", "{t}/m", "--no-report"], "unfinished"),
    (["merge", "{d}/good", "--out", "{d}/afile", "--no-report"], "not a directory"),
    (["merge", "{d}/good", "--out", "{d}/good", "--no-report"], "--out"),
    (["merge", "{d}/afile", "--out", "{t}/m", "--no-report"], "not a run directory"),
    # report and compare
    (["report", "{d}/binary_csv", "-o", "{t}/r.html"], "binary"),
    (["report", "{d}/unknown_status", "-o", "{t}/r.html"], "unknown status"),
    (["compare", "{d}/good", "{d}/nonnumeric_latency"], "not a number"),
    (["compare", "{d}/good", "{d}/good", "--max-missing", "2"], "--max-missing"),
    (["compare", "{d}/good", "{d}/good", "--max-missing", "nan"], "--max-missing"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS, ids=[" ".join(a[:4]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str, inputs: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    code, out, err = run_cli([a.format(d=inputs, t=tmp_path) for a in args], capsys)
    assert_one_error_line(code, err, 2)
    assert needle in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "m").exists()  # refused before any work


# Inputs that used to hang forever or abort/segfault the interpreter. They run in one child
# process with a timeout, so a regression fails here instead of stalling or killing the test run.
DANGEROUS: list[tuple[list[str], str]] = [
    (["run", "--budget", "nan", "--device", "cpu"], "budget_s"),
    (["run", "--budget", "inf", "--device", "cpu"], "budget_s"),
    (["sweep", "--suite", S, "--budget", "inf", "--no-probe"], "budget_s"),
    (["sweep", "--suite", S, "--budget", "nan", "--no-probe"], "budget_s"),
    (["sweep", "--suite", S, "--warmup", "inf", "--no-probe"], "warmup_s"),
    (["sweep", "--suite", S, "--min-samples", "1000000000", "--no-probe"], "min_samples"),
    (["sweep", "--suite", S, "--threads", "20000", "--no-probe"], "threads"),
    (["sweep", "--suite", S, "--threads", "100000", "--no-probe"], "threads"),
]


def test_hang_and_crash_inputs_return_at_once(inputs: Path, tmp_path: Path) -> None:
    batch = [[a.format(d=inputs) for a in args] for args, _ in DANGEROUS]
    answers = answers_in_child(batch, tmp_path)
    assert len(answers) == len(DANGEROUS)
    for (code, err), (_, needle) in zip(answers, DANGEROUS, strict=True):
        assert_one_error_line(code, err, 2)
        assert needle in err
    assert not (tmp_path / "results").exists()


def sweep_args(suite: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--suite", str(suite), "--out", str(out), "--no-report", "--no-probe", *extra]


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def finished_run(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "run"
    code, _, err = run_cli(sweep_args(inputs / "suite.toml", out), capsys)
    assert code == 0, err
    return out


def test_resume_refuses_another_run_naming_what_differs(finished_run: Path, inputs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    suite = inputs / "suite.toml"
    before = (finished_run / schema.RESULTS_CSV).read_bytes(), (finished_run / schema.META_JSON).read_bytes()
    other = tmp_path / "other.toml"
    other.write_text(SUITE.replace('name = "hard"', 'name = "hard2"'))
    edited = tmp_path / "edited.toml"
    edited.write_text(SUITE.replace("seq_len = [16, 32]", "seq_len = [16, 64]"))
    refusals = [
        (sweep_args(suite, finished_run, "--resume", "--budget", "0.01"), 3, "budget_s 0.002 -> 0.01"),
        (sweep_args(suite, finished_run, "--resume", "--accuracy", "--no-accuracy"), 3, "accuracy True -> False"),
        (sweep_args(suite, finished_run, "--resume", "--set", "rope_theta=2e6"), 2, "rope_theta"),
        (sweep_args(suite, finished_run, "--resume", "--dtype", "float64"), 2, "dtype"),
        # 1/1: a shard whose slice is never empty, whatever the case ids hash to.
        (sweep_args(suite, finished_run, "--resume", "--shard", "1/1"), 2, "shard None -> '1/1'"),
        (sweep_args(other, finished_run, "--resume"), 2, "suite 'hard' -> 'hard2'"),
        (sweep_args(edited, finished_run, "--resume"), 2, "case list"),
    ]
    for args, expected, needle in refusals:
        code, _, err = run_cli(args, capsys)
        assert_one_error_line(code, err, expected)
        assert needle in err, err
    # Nothing was appended and meta.json still describes the rows.
    assert ((finished_run / schema.RESULTS_CSV).read_bytes(), (finished_run / schema.META_JSON).read_bytes()) == before
    code, _, err = run_cli(sweep_args(suite, finished_run, "--resume"), capsys)
    assert code == 0, err
    assert len(read(finished_run / schema.RESULTS_CSV)) == 2


def test_resume_with_another_torch_is_not_comparable(finished_run: Path, inputs: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((finished_run / schema.META_JSON).read_text())
    (finished_run / schema.META_JSON).write_text(json.dumps({**meta, "torch": "1.0.0"}))
    code, _, err = run_cli(sweep_args(inputs / "suite.toml", finished_run, "--resume"), capsys)
    assert_one_error_line(code, err, 3)
    assert "torch '1.0.0' ->" in err


def test_resume_refuses_rows_without_a_run_record(finished_run: Path, inputs: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((finished_run / schema.META_JSON).read_text())
    del meta["run"]
    (finished_run / schema.META_JSON).write_text(json.dumps(meta))
    code, _, err = run_cli(sweep_args(inputs / "suite.toml", finished_run, "--resume"), capsys)
    assert_one_error_line(code, err, 2)
    assert "no run record" in err


def test_a_locked_run_directory_is_refused(finished_run: Path, inputs: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = sweep_args(inputs / "suite.toml", finished_run, "--resume")
    with RunWriter(finished_run, resume=True):  # another sweep holding the directory
        code, _, err = run_cli(args, capsys)
        assert_one_error_line(code, err, 2)
        assert "in use by another mlabench process" in err
        code, _, err = run_cli(["merge", str(finished_run), "--out", str(finished_run.parent / "m"), "--no-report"],
                               capsys)  # reading is fine while a sweep writes elsewhere
        assert code == 0, err
    assert run_cli(args, capsys)[0] == 0  # released with the writer


def test_two_concurrent_sweeps_never_share_a_directory(inputs: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow.toml"  # one case sampled for a minute: the first sweep holds the directory
    slow.write_text(SUITE.replace("budget_s = 0.002", "budget_s = 60").replace("[16, 32]", "[16]"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlabench", *sweep_args(slow, out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / schema.META_JSON).exists():
            time.sleep(0.05)
        second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGTERM)  # stop after the case in flight...
        time.sleep(0.5)
        first.send_signal(signal.SIGTERM)  # ...and the second signal abandons it
        _, first_err = first.communicate(timeout=120)
    assert_one_error_line(second.returncode, second.stderr, 2)
    assert "in use" in second.stderr
    assert first.returncode == 143, first_err
    assert "Traceback" not in first_err
    assert read(out / schema.RESULTS_CSV) == []  # the abandoned case left no row, the refused sweep none


def test_wall_limit_ends_cases_as_timeout_rows_and_dropped_combinations_say_why(
        inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(sweep_args(inputs / "suite.toml", out, "--variant", "mha,mla-absorbed", "--set",
                                      "rope_head_dim=0", "--timeout", "0.001"), capsys)
    assert code == 1, err  # timeout is a failed status
    rows = read(out / schema.RESULTS_CSV)
    assert [r["status"] for r in rows] == ["timeout", "timeout"]
    assert all("wall limit of 0.001 s" in r["error"] for r in rows)
    assert "dropped as invalid: tiny mla-absorbed: rope_head_dim" in err
    code, _, err = run_cli(["report", str(out), "-o", str(tmp_path / "r.html")], capsys)
    assert code == 0, err  # the reader knows the status


def test_timing_stops_at_the_deadline_and_caps_samples() -> None:
    import torch

    from mlabench.errors import CaseTimeout
    from mlabench.measure.timing import TimingSettings, time_step

    calls = []

    def step() -> None:
        calls.append(1)
        time.sleep(0.02)

    with pytest.raises(CaseTimeout):
        time_step(step, torch.device("cpu"), TimingSettings(budget_s=60, warmup_s=60), time.perf_counter() + 0.01)
    assert len(calls) == 1  # the first call ran past the deadline: ended at the next check
    capped = time_step(lambda: None, torch.device("cpu"),
                       TimingSettings(budget_s=0.0, warmup_s=0.0, min_samples=10**5, max_samples=5))
    assert 1 <= len(capped.samples_ms) <= 5


def test_cpu_allocation_failure_is_oom(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mlabench import runner
    from mlabench.suites import Suite, expand

    case = expand(Suite("t", "", "", ({"model": ["tiny"], "variant": ["mha"]},)), "cpu", {"eager": ["mha"]}).cases[0]

    def fail(*_args: object) -> list[float]:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes")

    monkeypatch.setattr(runner, "_measure", fail)
    monkeypatch.setattr(runner, "_preflight", lambda *_a: None)
    result = runner.run_case(case, runner.RunContext(device=torch.device("cpu")))
    assert result.status == "oom"


def test_preflight_sees_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlabench.measure import memory

    monkeypatch.setattr(memory, "cgroup_available_bytes", lambda: 12345)
    assert memory.available_ram_bytes() == 12345  # far below any host's MemAvailable


def test_write_failure_mid_run_is_one_line_and_resumable(inputs: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_append = RunWriter.append
    appended: list[int] = []

    def full_disk(self: RunWriter, row: dict, samples: list[float]) -> None:
        if appended:
            raise OSError(errno.ENOSPC, "No space left on device")
        appended.append(1)
        real_append(self, row, samples)

    monkeypatch.setattr(RunWriter, "append", full_disk)
    code, _, err = run_cli(sweep_args(inputs / "suite.toml", out), capsys)
    assert code == 2 and "Traceback" not in err
    # The sweep had started (header, progress); the failure itself is one line, the last.
    errors = [line for line in err.splitlines() if line.startswith("mlabench: error:")]
    assert errors == [err.strip().splitlines()[-1]]
    assert "No space left on device" in errors[0] and "--resume" in errors[0]
    assert len(read(out / schema.RESULTS_CSV)) == 1
    assert json.loads((out / schema.META_JSON).read_text())["interrupted"] is True
    monkeypatch.setattr(RunWriter, "append", real_append)
    assert run_cli(sweep_args(inputs / "suite.toml", out, "--resume"), capsys)[0] == 0  # lock released, resumable
    assert len(read(out / schema.RESULTS_CSV)) == 2


def test_sigterm_stops_like_ctrl_c(tmp_path: Path) -> None:
    slow = tmp_path / "slow.toml"
    slow.write_text(SUITE.replace("budget_s = 0.002", "budget_s = 0.3").replace("[16, 32]", "[16, 24, 32, 48]"))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mlabench", *sweep_args(slow, out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    results = out / schema.RESULTS_CSV
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(results.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert "cases:" in stdout  # the summary survived the ending
    assert 1 <= len(read(results)) < 4
    assert json.loads((out / schema.META_JSON).read_text())["interrupted"] is True


def test_merge_asks_before_joining_partial_or_mixed_sets(inputs: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["merge", str(inputs / "shard1"), str(inputs / "shard3"), "--out", str(tmp_path / "p"),
                            "--no-report", "--allow-partial"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "p" / schema.META_JSON).read_text())["partial"] is True
    code, _, err = run_cli(["merge", str(inputs / "good"), str(inputs / "other_suite"), "--out",
                            str(tmp_path / "x"), "--no-report", "--allow-mixed"], capsys)
    assert code == 0, err
    assert {r["suite"] for r in read(tmp_path / "x" / schema.RESULTS_CSV)} == {"decode", "prefill"}


def test_report_and_compare_drop_a_torn_last_row_with_a_warning(inputs: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["report", str(inputs / "torn"), "-o", str(tmp_path / "r.html")], capsys)
    assert code == 0, err
    assert "warning" in err and "torn last row" in err
    code, out, err = run_cli(["compare", str(inputs / "good"), str(inputs / "torn"), "--json"], capsys)
    assert code == 0, err
    assert "torn last row" in err
    assert json.loads(out)["missing"] == 0  # the torn row was the case in flight, not one of the baseline's


def test_compare_shows_missing_cases_and_fails_past_the_share(inputs: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = make_run(tmp_path / "base", meta=finished_meta(), **{**GRID, "seq_lens": (256, 512, 1024, 2048, 4096)})
    lines = (base / schema.RESULTS_CSV).read_text().splitlines(keepends=True)
    cand = tmp_path / "cand"
    shutil.copytree(base, cand)
    (cand / schema.RESULTS_CSV).write_text("".join(lines[:1] + lines[2:]))  # one of ten cases gone
    code, out, _ = run_cli(["compare", str(base), str(cand)], capsys)
    assert code == 0 and "1 of 10 baseline cases missing" in out  # shown even when it passes
    (cand / schema.RESULTS_CSV).write_text("".join(lines[:1] + lines[5:]))  # four of ten gone
    code, out, _ = run_cli(["compare", str(base), str(cand)], capsys)
    assert code == 1 and "4 of 10 baseline cases missing" in out
    assert run_cli(["compare", str(base), str(cand), "--max-missing", "0.5"], capsys)[0] == 0


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["sweep", "--help"], capsys)
    assert code == 0
    assert "[default: results/runs/<UTC time>-<suite>-<device>]" in " ".join(out.split())  # brackets survive
    from typer.main import get_command

    from mlabench.cli.app import app

    params = get_command(app).commands["sweep"].params  # type: ignore[attr-defined]
    assert len(params) > 25
    assert [p.name for p in params if not (getattr(p, "help", None) or "").strip()] == []
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip().startswith("mlabench ")
