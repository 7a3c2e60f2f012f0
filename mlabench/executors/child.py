"""The child process of an isolated case: `python -m mlabench.executors.child FD`.

Reads one pickled `isolate.Job` on stdin, says "ready" on the pipe FD once torch and
mlabench are imported (the case's wall limit starts then), runs the case with the
in-process runner and sends back an `isolate.Isolated`. Nothing here writes the run
directory: only the driver does.
"""

from __future__ import annotations

import ctypes
import importlib
import pickle
import signal
import socket
import sys
from multiprocessing.connection import Connection


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed driver leaves no orphan."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphan finishes its case and exits


def main(argv: list[str]) -> int:
    _die_with_parent()
    conn = Connection(int(argv[1]), readable=False)
    job = pickle.loads(sys.stdin.buffer.read())  # unpickling imports mlabench.case and torch

    for module, root in job.plugins:
        if root and root not in sys.path:
            sys.path.append(root)
        importlib.import_module(module)  # registers its variants and backends, as in the driver

    import torch

    from mlabench.executors.isolate import Isolated
    from mlabench.measure.envinfo import device_info
    from mlabench.measure.memory import open_nvml
    from mlabench.measure.peaks import spec_peaks
    from mlabench.runner import where
    from mlabench.tp import run_any_case

    ctx = job.ctx
    kind = where(ctx.device)["device_name"]
    if job.peaks_for and kind != job.peaks_for:
        ctx.peaks = spec_peaks(kind, [job.case.dtype])
    if ctx.device.type == "cpu" and ctx.timing.threads:
        torch.set_num_threads(int(ctx.timing.threads))
    ctx.nvml = open_nvml(ctx.device)
    conn.send("ready")
    result = run_any_case(job.case, ctx)  # a tp > 1 case: on ranks this child starts
    # The CUDA context dies with this process: a sticky error costs this case only, not the sweep.
    result.fatal = False
    try:
        device = device_info(ctx.device)
    except Exception:  # a lost CUDA context may refuse even this; the row is what matters
        device = {"type": ctx.device.type, "name": result.row.get("device_name")}
    conn.send(Isolated(result, socket.gethostname(), device))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
