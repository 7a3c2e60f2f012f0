"""The fork server (executors/forkserver.py): a function run in a fresh child comes back as a
value, an exception, a signal or a timeout; the child sees the caller's environment as it is at
the call; and nothing it starts outlives a driver killed with SIGKILL, whether the driver dies
while the server is still starting or while a case runs: no process left without the driver
goes on to load the case's code, and none survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from suite_text import FAST_SETTINGS

from mlabench import schema
from mlabench.executors.forkserver import run_isolated

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the die-with-parent signal is Linux's")


def where_am_i(x: int) -> tuple[int, int, int, int]:
    return x * 2, os.getpid(), os.getsid(0), os.getppid()


def aborts() -> None:
    print("last words before the abort", flush=True)
    os.abort()


def raises() -> None:
    raise ValueError("bad input seen in the child")


def sleeps() -> None:
    print("sleeping", flush=True)
    time.sleep(3600)


def forks_a_helper() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def reads_env(name: str) -> str | None:
    return os.environ.get(name)


def test_a_value_comes_back_from_a_fresh_child_in_its_own_session() -> None:
    first, second = run_isolated(where_am_i, 21), run_isolated(where_am_i, 4)
    assert first.ok and second.ok, (first, second)
    (value, pid, sid, ppid), (value2, pid2, _, ppid2) = first.value, second.value
    assert (value, value2) == (42, 8)
    assert len({pid, pid2, os.getpid()}) == 3  # a new process each call, never this one
    assert sid == pid  # leads its own session: Ctrl-C in the terminal reaches the driver alone
    assert ppid == ppid2 != os.getpid()  # forked by the one warm server, not by the caller


def test_each_way_of_ending_is_an_outcome() -> None:
    aborted = run_isolated(aborts)
    assert aborted.status == "error" and aborted.signal == "SIGABRT" and aborted.exitcode == -signal.SIGABRT
    assert aborted.error == "killed by SIGABRT" and aborted.output == "last words before the abort"
    raised = run_isolated(raises)
    assert raised.status == "error" and raised.error == "raised ValueError: bad input seen in the child"
    hung = run_isolated(sleeps, timeout=0.5)
    assert hung.status == "timeout" and hung.error == "no answer within 0.5 s" and hung.output == "sleeping"
    assert hung.exitcode == -signal.SIGKILL


def test_a_case_that_forks_keeps_its_own_children() -> None:
    """The first steps (die with the server) are the server's children's only: a process the
    case forks is the case's, and runs (its parent is not the server)."""
    assert run_isolated(forks_a_helper).value == 7


def test_the_child_sees_the_environment_of_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker's GPU assignment changes per task, after the server started."""
    run_isolated(reads_env, "X")  # the server is running before the variable exists
    monkeypatch.setenv("MLABENCH_TEST_ASSIGNED", "3")
    assert run_isolated(reads_env, "MLABENCH_TEST_ASSIGNED").value == "3"


def test_a_call_may_give_the_child_another_environment() -> None:
    """A driver runs a case with the environment of the Ray lease that holds its GPUs."""
    assert run_isolated(reads_env, "MLABENCH_TEST_LEASED", env={"MLABENCH_TEST_LEASED": "cuda 5"}).value == "cuda 5"
    assert run_isolated(reads_env, "MLABENCH_TEST_LEASED").value is None  # only that call's


def sleeps_and_says_where(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(3600)


def test_a_stop_from_another_thread_kills_the_child(tmp_path: Path) -> None:
    """Several calls run at once from threads; setting one's stop ends that child only."""
    import threading

    stop, outcomes = threading.Event(), {}
    where = tmp_path / "pid"

    def call(name: str, fn: Any, *args: Any, **how: Any) -> None:
        outcomes[name] = run_isolated(fn, *args, **how)

    threads = [threading.Thread(target=call, args=("stopped", sleeps_and_says_where, str(where)),
                                kwargs={"stop": stop}),
               threading.Thread(target=call, args=("other", where_am_i, 5))]
    for thread in threads:
        thread.start()
    deadline = time.time() + 60
    while not where.exists() and time.time() < deadline:
        time.sleep(0.02)
    pid = int(where.read_text())
    stop.set()
    for thread in threads:
        thread.join(60)
    assert outcomes["stopped"].status == "error" and outcomes["stopped"].error == "stopped by the caller"
    assert outcomes["other"].ok and outcomes["other"].value[0] == 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_without_a_fork_server_each_call_spawns_and_says_so_once(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import multiprocessing

    from mlabench.executors import forkserver

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(forkserver, "_warned_spawn", False)
    first, second = run_isolated(where_am_i, 1), run_isolated(aborts)
    assert first.ok and first.value[0] == 2 and first.value[3] == os.getpid()  # spawned by this process itself
    assert second.signal == "SIGABRT"
    err = capsys.readouterr().err
    assert err.count("no fork server on this platform") == 1


MAIN_SCRIPT = """
import os, sys
with open(sys.argv[1], "a") as log:  # every process that runs this script says so
    log.write(f"{__name__} {os.getpid()}\\n")
from mlabench.executors.forkserver import run_isolated

def pid():
    return os.getpid()

if __name__ == "__main__":
    answers = [run_isolated(pid) for _ in range(3)]
    assert all(a.ok for a in answers), answers
"""


def test_the_callers_main_script_runs_once_in_the_server_not_in_each_child(tmp_path: Path) -> None:
    """Children unpickle `pid` from the caller's main script: the server imports that script once
    (a Ray worker's costs seconds) instead of every child running it again."""
    script, log = tmp_path / "driver.py", tmp_path / "ran.log"
    script.write_text(MAIN_SCRIPT)
    subprocess.run([sys.executable, str(script), str(log)], check=True, timeout=600)
    runs = [line.split()[0] for line in log.read_text().splitlines()]
    assert runs == ["__main__", "__mp_main__"]  # the driver, then the server; no child


ORPHAN_SUITE = """
name = "orphan"
""" + FAST_SETTINGS + """[[grid]]
model = "tiny"
variant = "mha"
backend = BACKENDS
mode = "decode"
batch = [1]
seq_len = [16]
"""


DRIVER = "import sys, crash_backends; from mlabench.cli.app import main; main(sys.argv[1:])"


def _marked(mark: str, python_only: bool = False) -> list[int]:
    """Processes started with `mark` in their environment (every descendant of the driver);
    `python_only`: those running this interpreter (not a short-lived tool the driver asks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes() and (
                        not python_only or (entry / "cmdline").read_bytes().split(b"\0")[0] == sys.executable.encode()):
                    found.append(int(entry.name))
            except OSError:
                pass  # gone, or not ours to read
    return found


@pytest.mark.parametrize("when", ["starting", "running"])
def test_nothing_outlives_a_killed_driver(when: str, tmp_path: Path) -> None:
    """`starting`: the driver dies a second after its first child process appears (the case's
    process, or the server, still importing torch);
    `running`: once the first case's row is on disk, while the next case (one that never returns)
    runs in its child."""
    suite = tmp_path / "orphan.toml"
    # `starting`: the case that never returns first, so an orphan would measure on; `running`: one case before it.
    backends = '["test-hang"]' if when == "starting" else '["eager", "test-hang"]'
    suite.write_text(ORPHAN_SUITE.replace("BACKENDS", backends))
    out = tmp_path / "run"
    mark = f"MLABENCH_TEST_ORPHAN={uuid.uuid4().hex}"
    here = str(Path(__file__).parent)  # crash_backends registers the never-returning backend
    imports = tmp_path / "imports.log"  # who loaded the case's code (crash_backends), under which parent
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1], "MLABENCH_TEST_IMPORT_LOG": str(imports),
           "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "sweep", "--suite", str(suite), "--out", str(out),
                               "--isolate", "--timeout", "600", "--no-probe", "--no-report"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = {os.getpid(), driver.pid}  # the driver and every process seen under it while it lived
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            tree.update(_marked(mark))
            if when == "starting" and [p for p in _marked(mark, python_only=True) if p != driver.pid]:
                time.sleep(1.0)  # the case handed over, its process still importing torch
                break
            results = out / schema.RESULTS_CSV
            if when == "running" and results.exists() and len(results.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        assert driver.poll() is None, "the driver ended before it could be killed"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 120  # a server killed mid-import notices once the import returns
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _marked(mark)
    for pid in survivors:  # leave nothing behind, then fail
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "processes outlived the killed driver"
    loaders = [tuple(map(int, line.split())) for line in imports.read_text().splitlines()]
    assert loaders and loaders[0][0] == driver.pid
    orphans = [pid for pid, parent in loaders if parent not in tree]
    assert not orphans, f"processes {orphans} loaded the case's code after the driver died"
