"""`--executor ray`, the driver's side: each case a Ray task holding one GPU (CPU cases:
`threads` CPUs), the case itself run in a fresh child process; rows come back to the driver.

Who forks the case's process depends on the cluster:
- A cluster that is this machine alone (a local instance, or one node started here): the
  driver, from its own warm fork server, under a lease task that holds the case's devices
  (executors/ray_lease.py). One server for the node imports torch, mlabench and the plan's
  backend preloads once; a local instance starts it before Ray itself, so the two starts
  overlap. The device's fingerprint and peaks are taken in a child of that server.
- A cluster of several machines: the worker, from a warm fork server of its own
  (executors/ray_task.py, the worker's side), a case crossing it as pickled bytes, so the
  worker imports no torch and never touches the device. The device's fingerprint and peaks are
  taken in such a child too, on a worker that then stays for the cases.

Ray (the optional extra `mlabench[ray]`) schedules the tasks over a cluster (`--ray-address`)
or over this machine's GPUs or CPUs (a local instance started here and stopped at the end).
Each task is a streaming generator that first says where it runs (host, node): the driver
counts a case as started when it actually starts, and a worker lost mid-case (node gone,
worker killed) becomes that case's `error` row naming the node. Tasks are not retried: a case
that kills its worker would kill the next one too.

A tensor-parallel case (tp = N) holds N GPUs (CPU cases: N times the threads) in one Ray
placement group of one bundle, packed on one node, so its ranks (started by the case's child,
mlabench.tp) meet over NCCL within a node; one group per degree serves its cases in turn. A
degree no node can hold is a `skipped` row with the reason, not a wait without end.

Stopping: once `should_stop()` is true, tasks not yet started are cancelled and the cases in
flight finish; closing the iterator (a second Ctrl-C) cancels those as well, killing the
cases' child processes.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import torch

from mlabench.case import Case
from mlabench.errors import UsageError
from mlabench.executors import ray_task
from mlabench.executors.forkserver import run_pickled
from mlabench.executors.isolate import (
    CASE_IN_CHILD,
    DESCRIBE_IN_CHILD,
    answer,
    case_modules,
    case_payload,
    child_imports,
    failed_row,
    kill_after,
    plugin_modules,
    warm_server,
)
from mlabench.executors.protocol import OnStart
from mlabench.executors.ray_cluster import check_accelerator, join, leave, next_message, one_node_here
from mlabench.executors.ray_cluster import ray_module as _ray
from mlabench.executors.ray_lease import run_leased
from mlabench.measure.peaks import Peaks
from mlabench.runner import CaseResult, RunContext

# Cases submitted beyond what the cluster can run at once: enough to keep workers busy between
# a result and the next submission, few enough that a stop cancels little.
QUEUE_AHEAD = 2
PLACEMENT_WAIT_S = 60.0  # for a tensor-parallel case's devices to be free on one node


class RayExecutor:
    """Cases as Ray tasks; `connect` first (executors/ray_cluster.py), `describe` before the run
    directory is opened."""

    name = "ray"

    def __init__(self, accelerator: str | None = None) -> None:
        self.accelerator = accelerator  # the GPU kind every case is pinned to (Ray's accelerator type)
        self.device_meta: dict[str, Any] | None = None
        self._peaks = Peaks()
        self._on_this_machine = False  # set by `describe`: the driver's fork server runs the cases
        self._warming: list[Any] = []  # the warm-up tasks' refs, kept until the run
        self._device = torch.device("cpu")
        self._groups: dict[int, Any] = {}  # tp degree -> its placement group (None: no node can hold it)
        self._preload: tuple[str, ...] = ()  # what the workers' fork servers import (set by `describe`)

    @classmethod
    def connect(cls, address: str | None, accelerator: str | None = None) -> RayExecutor:
        """Join the cluster at `address`, or start a local instance over this machine's devices
        (or use the one this process already runs, as tests do). `accelerator`: run every case on
        GPUs of that kind only (`--ray-accelerator`)."""
        join(address)
        return cls(accelerator)

    def close(self) -> None:
        for group in self._groups.values():
            if group is not None:
                _ray().util.remove_placement_group(group)
        self._groups.clear()
        leave()  # a local instance started for this run; a cluster joined stays up

    def resolve_device(self, name: str) -> torch.device:
        """The device kind every case asks the cluster for; each task sees its own GPU as cuda:0."""
        gpus = _ray().cluster_resources().get("GPU", 0)
        if name == "auto":
            name = "cuda" if gpus else "cpu"
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UsageError(f"--device: unknown device {name!r} (auto, cpu, cuda)") from None
        if dev.type == "cpu":
            if self.accelerator:
                raise UsageError(f"--ray-accelerator {self.accelerator}: pins GPU cases; these run on the CPU")
            return torch.device("cpu")
        if dev.type != "cuda":
            raise UsageError(f"--device: unsupported device type {dev.type!r} (auto, cpu, cuda)")
        if dev.index not in (None, 0):
            raise UsageError(f"--device {name}: with --executor ray each case gets one GPU of the cluster; "
                             "give --device cuda")
        if not gpus:
            raise UsageError("--device cuda: the Ray cluster has no GPU")
        if self.accelerator:
            check_accelerator(self.accelerator, _ray().cluster_resources())
        return torch.device("cuda:0")

    def _resources(self, ctx_device: torch.device, threads: int) -> dict[str, Any]:
        if ctx_device.type == "cuda":
            pinned = {"accelerator_type": self.accelerator} if self.accelerator else {}
            return {"num_gpus": 1, "num_cpus": 1, **pinned}
        return {"num_cpus": max(1, int(threads))}  # threads 0 (torch's default) still takes a CPU

    def _tp_options(self, tp: int, resources: dict[str, Any]) -> dict[str, Any] | None:
        """Task options that run a tp = N case on N times one case's devices, in one placement group
        packed on one node; None when no node frees them within PLACEMENT_WAIT_S."""
        ray = _ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        need = {"num_gpus": resources.get("num_gpus", 0) * tp, "num_cpus": resources["num_cpus"] * tp}
        if tp not in self._groups:
            bundle = {"GPU": need["num_gpus"], "CPU": need["num_cpus"]}
            if "accelerator_type" in resources:  # pinned GPU kind: the bundle asks for it too
                bundle[f"accelerator_type:{resources['accelerator_type']}"] = 0.001
            group = ray.util.placement_group([{k: v for k, v in bundle.items() if v}], strategy="STRICT_PACK")
            if not group.wait(timeout_seconds=PLACEMENT_WAIT_S):
                ray.util.remove_placement_group(group)
                group = None
            self._groups[tp] = group
        group = self._groups[tp]
        if group is None:
            return None
        return {**need, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=0)}

    def describe(self, plan: Any, probe: bool) -> None:
        """The fingerprint and peaks of the cases' device, taken in a child process where a case
        would run (so no CUDA context stays behind in the process that forks the cases): on a
        cluster that is this machine alone, a child of the driver's own fork server (started
        already with a local instance), which will run the cases; otherwise a child of one
        worker of the kind the cases ask for, while the other workers start their fork servers
        (fire and forget)."""
        ray = _ray()
        self._device = plan.device
        self._preload = case_modules(plan.cases)
        self._on_this_machine = one_node_here()
        dtypes = sorted({c.dtype for c in plan.cases}, key=lambda d: -sum(c.dtype == d for c in plan.cases))
        payload = pickle.dumps((plan.device, dtypes, probe, plan.settings.threads))
        if self._on_this_machine:
            warm_server(plan.cases)
            outcome = run_pickled(DESCRIBE_IN_CHILD, payload)
        else:
            resources = self._resources(plan.device, plan.settings.threads)
            described = ray.remote(max_calls=0, max_retries=0, **resources)(ray_task.call_task).remote(
                DESCRIBE_IN_CHILD, payload, self._preload)
            warm = ray.remote(max_calls=0, max_retries=0, **resources)(ray_task.warm_task)
            self._warming = [warm.remote(self._preload) for _ in range(self._capacity(resources) - 1)]
            outcome = ray.get(described)
        if not outcome.ok:
            raise UsageError(f"--executor ray: could not describe the device in a child process ({outcome.error}"
                             + (f": {outcome.output})" if outcome.output else ")"))
        self.device_meta, self._peaks = pickle.loads(outcome.value)

    def peaks(self, _dtypes: list[str], _probe: bool) -> Peaks:
        return self._peaks

    def _capacity(self, resources: dict[str, Any]) -> int:
        total = _ray().cluster_resources()
        if "num_gpus" in resources:
            return max(1, int(total.get("GPU", 0)))
        return max(1, int(total.get("CPU", 0) // resources["num_cpus"]))

    def _placement(self, case: Case, resources: dict[str, Any]) -> dict[str, Any] | CaseResult:
        """Task options for `case` beyond `resources` (a tp > 1 case's placement group), or the
        `skipped` row of a tp degree no node frees."""
        if case.tp == 1:
            return {}
        options = self._tp_options(case.tp, resources)
        if options is not None:
            return options
        kind = "GPUs" if "num_gpus" in resources else "CPUs"
        return CaseResult(failed_row(case, "skipped", f"tp = {case.tp}: no Ray node frees {case.tp} x one case's "
                                     f"{kind} at once", 0.0), [])

    def run(self, cases: list[Case], ctx: RunContext, on_start: OnStart | None,
            should_stop: Callable[[], bool]) -> Generator[CaseResult, None, None]:
        ray = _ray()
        resources = self._resources(ctx.device, ctx.timing.threads)
        window = self._capacity(resources) + QUEUE_AHEAD
        if not self._on_this_machine:
            yield from self._run_on_workers(cases, ctx, on_start, should_stop, resources, window)
            return
        lease = ray.remote(num_returns="streaming", max_retries=0, max_calls=0, **resources)(ray_task.lease_task)

        def submit(case: Case) -> Any:
            options = self._placement(case, resources)
            if isinstance(options, CaseResult):
                return options
            return (lease.options(**options) if options else lease).remote()

        yield from run_leased(cases, ctx, on_start, should_stop, submit, window, self._lost)

    def _run_on_workers(self, cases: list[Case], ctx: RunContext, on_start: OnStart | None,
                        should_stop: Callable[[], bool], resources: dict[str, Any],
                        window: int) -> Generator[CaseResult, None, None]:
        """Each case forked by its worker's own fork server (a cluster of several machines)."""
        ray = _ray()
        # max_calls=0: the worker stays, and with it its warm fork server (Ray would otherwise end a
        # GPU task's worker after one call, which matters only to a worker holding a CUDA context).
        task = ray.remote(num_returns="streaming", max_retries=0, max_calls=0, **resources)(ray_task.case_task)
        plugins = plugin_modules(cases)
        imports = child_imports(plugins)
        preload = self._preload or case_modules(cases)
        peaks_for = (self.device_meta or {}).get("name")
        waiting = deque(cases)
        flight: dict[Any, Case] = {}  # generator -> its case
        where: dict[Any, dict[str, str]] = {}  # generator -> host and node, once started
        done = 0
        try:
            while waiting or flight:
                if should_stop():
                    waiting.clear()
                    for gen in [g for g in flight if g not in where]:  # queued, not started: never run
                        ray.cancel(gen)
                        del flight[gen]
                while waiting and len(flight) < window:
                    case = waiting.popleft()
                    options = self._placement(case, resources)
                    if isinstance(options, CaseResult):
                        done += 1
                        yield options
                        continue
                    flight[(task.options(**options) if options else task).remote(
                        CASE_IN_CHILD, case_payload(case, ctx, plugins, peaks_for), imports, preload,
                        kill_after(ctx.timeout_s))] = case
                if not flight:
                    break
                ready, _ = ray.wait(list(flight), num_returns=1, timeout=0.5)
                for gen in ready:
                    case = flight[gen]
                    said, message = next_message(gen)
                    if said != "message":  # cancelled on request: no row, --resume runs it
                        del flight[gen]
                        if said == "failed":
                            done += 1
                            yield self._lost(case, where.pop(gen, None), message)
                        continue
                    if isinstance(message, dict):
                        where[gen] = message
                        if on_start:
                            on_start(case, done, len(cases))
                        continue
                    del flight[gen]
                    where.pop(gen, None)
                    done += 1
                    isolated = answer(message, case, ctx)
                    isolated.result.device = isolated.device or None
                    yield isolated.result
        finally:
            for gen in flight:  # abandoned: kill the workers, and with them the cases' processes
                ray.cancel(gen, force=True)

    @staticmethod
    def _lost(case: Case, where: dict[str, str] | None, exc: Exception) -> CaseResult:
        ray = _ray()
        node = f"on node {where['host']} ({where['node']})" if where else "before it reported its node"
        if isinstance(exc, ray.exceptions.RayTaskError):  # the task itself raised: mlabench's bug, not a lost node
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            text = str(cause).strip().splitlines()
            what = f"Ray task failed {node}: {type(cause).__name__}: {text[-1] if text else ''}"
        else:
            text = str(exc).strip().splitlines()
            what = f"Ray worker lost mid-case {node}: {type(exc).__name__}: {text[0] if text else ''}"
        return CaseResult(failed_row(case, "error", what, 0.0, host=where["host"] if where else ""), [])
