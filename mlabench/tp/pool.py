"""The ranks of tensor-parallel cases: N processes of one torch.distributed group, started by
`torch.multiprocessing.start_processes` (spawn) and kept for every case of that degree.

Starting N interpreters that import torch costs seconds; a sweep runs many cases at each
degree, so a group is started once per degree (and device kind) and fed case after case:
each rank takes the case from its own queue, runs it (`rank.measure_sharded` inside
`runner.run_case`), and rank 0 puts the row on the answer queue. gloo joins the ranks on the
CPU, NCCL on CUDA (rank r on GPU r): the same code with another backend.

A rank that dies mid-case (killed, a segfault) or a group silent past the case's wall limit
(a hung collective) costs that case only: the driver kills the group's processes, writes one
`error` (or `timeout`) row, and the next case starts a fresh group.
"""

from __future__ import annotations

import queue
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mlabench import schema
from mlabench.case import Case
from mlabench.errors import SkippedError
from mlabench.measure.memory import open_nvml
from mlabench.measure.peaks import Peaks
from mlabench.measure.timing import TimingSettings
from mlabench.runner import CaseResult, RunContext, analytic_columns, run_case, where

POLL_S = 0.05
KILL_GRACE_S = 10.0  # past the case's wall limit, before the group is presumed hung
STARTUP_LIMIT_S = 300.0  # N interpreters importing torch on a loaded machine


@dataclass(frozen=True)
class RankJob:
    """What every rank needs for one case (RunContext less what does not cross processes)."""

    case: Case
    timing: TimingSettings
    peaks: Peaks
    accuracy: bool
    seed: int
    timeout_s: float


def _rank_main(rank: int, world: int, backend: str, store: str, inboxes: list[Any], answers: Any,
               threads: int) -> None:
    """One rank: join the group, then run the cases its queue hands it until None."""
    from mlabench.tp.rank import measure_sharded  # the rank's own import, after spawn

    _die_with_parent()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(minutes=30))
    nvml = open_nvml(device)  # this rank's GPU: the NVML delta around its cache allocation
    answers.put(("ready", rank))
    try:
        while (job := inboxes[rank].get()) is not None:
            ctx = RunContext(device=device, timing=job.timing, peaks=job.peaks, nvml=nvml, accuracy=job.accuracy,
                             seed=job.seed, timeout_s=job.timeout_s)
            result = run_case(job.case, ctx, measure_sharded)
            if rank == 0:
                answers.put(("row", result))
    finally:
        dist.destroy_process_group()


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank when the process that started it dies (a driver killed
    with SIGKILL leaves no rank waiting for its next case)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the driver's exit hook still stops the ranks


class RankGroup:
    """`world` ranks on `device_type` ('cpu' or 'cuda'), started now, ready for cases."""

    def __init__(self, world: int, device_type: str, threads: int) -> None:
        self.world, self.device_type = world, device_type
        self.backend = "nccl" if device_type == "cuda" else "gloo"
        spawn = mp.get_context("spawn")
        self._inboxes = [spawn.Queue() for _ in range(world)]
        self._answers = spawn.Queue()
        self._dir = tempfile.mkdtemp(prefix="mlabench-tp-")
        store = str(Path(self._dir) / "store")  # a FileStore: no port to pick or to collide on
        self._procs = mp.start_processes(_rank_main, args=(world, self.backend, store, self._inboxes, self._answers,
                                                           threads), nprocs=world, join=False,
                                         start_method="spawn")
        ready: set[int] = set()
        deadline = time.monotonic() + STARTUP_LIMIT_S
        try:
            while len(ready) < world:
                message = self._next(deadline, "starting")
                if message[0] == "ready":
                    ready.add(message[1])
        except BaseException:
            self.kill()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.processes if p.pid is not None]

    def _dead(self) -> str:
        """'' while every rank lives, else which one ended and how."""
        for rank, proc in enumerate(self._procs.processes):
            code = proc.exitcode
            if code is not None:
                how = signal.Signals(-code).name if code < 0 else f"exit code {code}"
                return f"rank {rank} of {self.world} ended ({how})"
        return ""

    def _next(self, deadline: float, doing: str) -> tuple[str, Any]:
        while True:
            try:
                return self._answers.get(timeout=POLL_S)
            except queue.Empty:
                pass
            dead = self._dead()
            if dead:
                raise RankLost(f"{dead} while {doing}")
            if time.monotonic() > deadline:
                raise RankTimeout(f"no answer from the {self.world} ranks while {doing}")

    def run(self, job: RankJob) -> CaseResult:
        """The case's row from rank 0; RankLost / RankTimeout when the group failed."""
        for inbox in self._inboxes:
            inbox.put(job)
        deadline = time.monotonic() + job.timeout_s + KILL_GRACE_S
        while True:
            kind, payload = self._next(deadline, f"running {job.case.label()}")
            if kind == "row":
                return payload

    def close(self) -> None:
        """Stop the ranks: asked first, then killed (only the processes this group started)."""
        for inbox in self._inboxes:
            try:
                inbox.put(None)
            except (OSError, ValueError):
                pass
        end = time.monotonic() + 5.0
        for proc in self._procs.processes:
            proc.join(max(end - time.monotonic(), 0.0))
        self.kill()

    def kill(self) -> None:
        for proc in self._procs.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
        for q in (*self._inboxes, self._answers):
            q.cancel_join_thread()
            q.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class RankLost(RuntimeError):
    """A rank died mid-case."""


class RankTimeout(RuntimeError):
    """The ranks gave no answer past the case's wall limit."""


_GROUPS: dict[tuple[int, str], RankGroup] = {}


def close_groups() -> None:
    """Stop every group this process started (the end of a sweep; also at exit)."""
    while _GROUPS:
        _GROUPS.popitem()[1].close()


# At exit, before multiprocessing joins its children (the ranks would wait for their next case
# for ever): a multiprocessing finalizer runs there both at interpreter exit and at the end of a
# process multiprocessing started (an isolated case's child), where atexit hooks do not run.
mp_util.Finalize(None, close_groups, exitpriority=100)


def group_for(world: int, device_type: str, threads: int) -> RankGroup:
    key = (world, device_type)
    if key not in _GROUPS:
        _GROUPS[key] = RankGroup(world, device_type, threads)
    return _GROUPS[key]


def _failed(case: Case, ctx: RunContext, status: str, error: str, started: float) -> CaseResult:
    row = {**case.key, **analytic_columns(case), "case_id": case.case_id, "status": status, "error": error[:300],
           "wall_s": round(time.perf_counter() - started, 3), **where(ctx.device)}
    return CaseResult(schema.ResultRow.from_mapping(row), [])


def run_tensor_parallel(case: Case, ctx: RunContext) -> CaseResult:
    """A tp > 1 case on `case.tp` ranks of this machine; every way it ends is one row."""
    started = time.perf_counter()
    if ctx.device.type == "cuda" and torch.cuda.device_count() < case.tp:
        def skip(*_: Any) -> list[float]:
            raise SkippedError(f"tp = {case.tp} needs {case.tp} GPUs, this machine has {torch.cuda.device_count()}")
        return run_case(case, ctx, skip)
    job = RankJob(case, ctx.timing, ctx.peaks, ctx.accuracy, ctx.seed, ctx.timeout_s)
    key = (case.tp, ctx.device.type)
    try:
        return group_for(case.tp, ctx.device.type, ctx.timing.threads).run(job)
    except RankLost as exc:
        _drop(key)
        return _failed(case, ctx, "error", str(exc), started)
    except RankTimeout as exc:
        _drop(key)
        return _failed(case, ctx, "timeout", f"{exc} (past the case's wall limit of {ctx.timeout_s:g} s)", started)
    except BaseException:
        _drop(key)
        raise


def _drop(key: tuple[int, str]) -> None:
    group = _GROUPS.pop(key, None)
    if group is not None:
        group.kill()

