"""Joining a Ray cluster for `--executor ray`, or starting a local instance over this machine's
devices: the part of the Ray executor that runs before anything else, so it imports no torch.

Starting a local instance takes seconds, spent mostly waiting for Ray's processes to come up;
`join` can have a thread import what the sweep needs meanwhile (`importing`), so that the two
overlap instead of adding up. Stopping it takes over a second too (Ray gives its autoscaler
monitor a second's grace to exit): `leave` stops it in a thread while the command writes its
report and summary; the interpreter waits for that thread before it exits.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from mlabench.errors import UsageError


def ray_module() -> Any:
    """The `ray` module, or a usage error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'mlabench[ray]'") from None
    return ray


ACCELERATOR_PREFIX = "accelerator_type:"  # how Ray names a node's GPU kind among its resources


def check_accelerator(kind: str, resources: dict[str, float]) -> None:
    """Refuse a GPU kind no node of the cluster has (its tasks would wait forever), naming those it has."""
    kinds = sorted(k[len(ACCELERATOR_PREFIX):] for k in resources if k.startswith(ACCELERATOR_PREFIX))
    if kind not in kinds:
        raise UsageError(f"--ray-accelerator {kind}: no node of the Ray cluster has that GPU kind "
                         f"(it has: {', '.join(kinds) or 'none'})")


REACH_TIMEOUT_S = 5.0


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Refuse within seconds a cluster address nothing answers at (a closed port, an unknown host):
    ray.init would wait for it forever. `auto` and `local` are Ray's to find."""
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, colon, port = target.rpartition(":")
    if not colon and address.startswith("ray://"):
        host, port = target, "10001"  # the Ray Client server's default port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray-address: expected HOST:PORT, ray://HOST[:PORT] or auto, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({why})") from None

_started_here = False  # whether this process started the Ray instance it is joined to
_stopping: threading.Thread | None = None  # `leave`'s thread, while it stops the local instance


def join(address: str | None, importing: Sequence[str] = (), preload: Sequence[str] | None = None) -> bool:
    """Join the cluster at `address` or start a local instance over this machine's CPUs and GPUs
    (nothing to do if this process is already joined: a second call, or a test's own instance).
    True when this process started the instance, so it stops it at the end. `importing`: modules
    a thread imports while Ray starts. `preload`: for a local instance, start this process's fork
    server first, importing these (its cases run there, executors/ray_lease.py): its imports too
    overlap Ray's start."""
    global _started_here
    ray = ray_module()
    if preload is not None and not address and not ray.is_initialized():
        from mlabench.executors.forkserver import warm

        warm(preload)
    if _stopping is not None:
        _stopping.join()  # an instance this process is stopping: let it go before starting anew
    if ray.is_initialized():
        return _started_here
    if address:
        check_reachable(address)
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    errors: list[BaseException] = []
    thread = threading.Thread(target=_import_all, args=(importing, errors), name="mlabench-imports", daemon=True)
    thread.start()
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # Ray counts the GPUs itself, within CUDA_VISIBLE_DEVICES
            ray.init(num_cpus=os.cpu_count() or 1, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "locally"
        raise UsageError(f"--executor ray: cannot start or reach Ray {where} ({str(exc).splitlines()[0]})") \
            from None
    finally:
        thread.join()
    if errors:  # the import again, in this thread: its error as it would be without the overlap
        _import_all(importing, [])
    _started_here = not address
    return _started_here


def one_node_here() -> bool:
    """Whether the cluster is this machine alone: a local instance, or one node started here."""
    ray = ray_module()
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()


def next_message(task: Any) -> tuple[str, Any]:
    """What a streaming task said next: ("message", value), ("ended", None), ("cancelled", None)
    when stopped on request, or ("failed", the RayError) when it raised or its worker was lost."""
    ray = ray_module()
    try:
        return "message", ray.get(next(task))
    except StopIteration:
        return "ended", None
    except ray.exceptions.TaskCancelledError:
        return "cancelled", None
    except ray.exceptions.RayError as exc:
        return "failed", exc


def leave() -> None:
    """Stop the local instance this process started, in a thread (a joined cluster is left running).
    Nothing of Ray is used after this; the thread is not a daemon, so the process exits after it."""
    global _started_here, _stopping
    if _started_here:
        _started_here = False
        _stopping = threading.Thread(target=ray_module().shutdown, name="mlabench-ray-stop")
        _stopping.start()


def _import_all(modules: Sequence[str], errors: list[BaseException]) -> None:
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001  (raised again by the caller, in its own thread)
        errors.append(exc)


__all__ = ["check_accelerator", "check_reachable", "join", "leave", "next_message", "one_node_here", "ray_module"]
