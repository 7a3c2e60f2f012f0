"""`--executor ray` on a cluster that is this machine alone: Ray holds each case's devices, the
driver forks the case.

Each case is a lease (ray_task.lease_task) asking for the case's resources: one GPU, or the
case's CPUs, or a tensor-parallel case's placement group. Once Ray starts the lease, the case
runs in a child of the driver's own warm fork server (executors/isolate.py), in the lease's
environment (the GPUs Ray assigned it), waited on by a thread of the driver; when the case is
done the lease is cancelled and its devices go to the next case. One server for the node,
instead of one per worker, imports torch, mlabench and the backends' preloads once, and a local
instance starts it before Ray itself (executors/ray_cluster.py), so the two starts overlap.

A lease whose worker is lost mid-case (killed, its node gone) stops the case: its child is
killed and the row names the lost worker. Stopping: leases not started are cancelled and the
cases in flight finish; closing the iterator (a second Ctrl-C) kills the cases in flight and
cancels their leases.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from mlabench.case import Case
from mlabench.executors.isolate import Isolated, failed_row, isolate_case, plugin_modules
from mlabench.executors.protocol import OnStart
from mlabench.executors.ray_cluster import next_message, ray_module
from mlabench.runner import CaseResult, RunContext

# How long the driver waits on the leases before it looks at the cases that finished: a case's
# answer waits at most this long to be recorded and to free its lease for the next case.
WAIT_S = 0.01
# Submit returns a lease (a Ray generator) or, for a case no node can hold, its row.
Submit = Callable[[Case], Any]
Lost = Callable[[Case, "dict[str, str] | None", Exception], CaseResult]


@dataclass
class _Running:
    """A case whose lease has started: its thread, how to stop its child, and its answer."""

    case: Case
    where: dict[str, str]
    stop: threading.Event = field(default_factory=threading.Event)
    answer: list[Isolated] = field(default_factory=list)
    thread: threading.Thread | None = None


def run_leased(cases: list[Case], ctx: RunContext, on_start: OnStart | None, should_stop: Callable[[], bool],
               submit: Submit, window: int, lost: Lost) -> Generator[CaseResult, None, None]:
    """Every case under a lease, at most `window` leases asked for at once; results as cases end."""
    ray = ray_module()
    plugins = plugin_modules(cases)
    waiting = deque(cases)
    leases: dict[Any, Case] = {}  # lease generator -> its case, started or not
    running: dict[Any, _Running] = {}  # the started ones
    finished: queue.Queue[Any] = queue.Queue()  # leases whose case's thread has an answer
    done = 0

    def work(lease: Any, run: _Running, env: dict[str, str]) -> None:
        try:
            run.answer.append(isolate_case(run.case, ctx, plugins, env=env, stop=run.stop))
        except Exception as exc:  # noqa: BLE001  (a row, whatever went wrong in the driver)
            row = failed_row(run.case, "error", f"the driver could not run the case: {type(exc).__name__}: {exc}",
                             0.0, device=ctx.device)
            run.answer.append(Isolated(CaseResult(row, [])))
        finally:
            finished.put(lease)

    try:
        while waiting or leases:
            if should_stop():
                waiting.clear()
                for lease in [g for g in leases if g not in running]:  # asked for, not started: never run
                    ray.cancel(lease)
                    del leases[lease]
            while waiting and len(leases) < window:
                case = waiting.popleft()
                lease = submit(case)
                if isinstance(lease, CaseResult):
                    done += 1
                    yield lease
                else:
                    leases[lease] = case
            while not finished.empty():
                lease = finished.get()
                run = running.pop(lease, None)
                if run is None:  # its lease was lost first: its row is out already
                    continue
                del leases[lease]
                ray.cancel(lease)  # the devices go to the next case
                done += 1
                yield _result(run.answer[0])
            if not leases:
                continue
            ready, _ = ray.wait(list(leases), num_returns=1, timeout=WAIT_S)
            for lease in ready:
                case = leases[lease]
                said, message = next_message(lease)
                if said == "cancelled":
                    del leases[lease]  # stopped on request: no row, --resume runs it
                    continue
                if lease in running or said != "message":  # a lease that ended: its worker is gone
                    del leases[lease]
                    run = running.pop(lease, None)
                    if run is not None:
                        run.stop.set()
                        assert run.thread is not None
                        run.thread.join()
                    done += 1
                    error = message if said == "failed" else RuntimeError("the lease ended")
                    yield lost(case, run.where if run else None, error)
                    continue
                run = _Running(case, {"host": message["host"], "node": message["node"]})
                run.thread = threading.Thread(target=work, args=(lease, run, message["env"]), daemon=True,
                                              name=f"mlabench-case-{case.case_id}")
                running[lease] = run
                if on_start:
                    on_start(case, done, len(cases))
                run.thread.start()
    finally:
        for run in running.values():  # abandoned: kill the cases' processes
            run.stop.set()
        for lease in leases:
            ray.cancel(lease)
        for run in running.values():
            if run.thread is not None:
                run.thread.join()


def _result(answer: Isolated) -> CaseResult:
    answer.result.device = answer.device or None
    return answer.result


__all__ = ["run_leased"]
