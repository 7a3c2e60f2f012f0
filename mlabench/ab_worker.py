"""One side of `mlabench ab` in lockstep: a multi-round sweep that runs a case only when told to.

`python -m mlabench.ab_worker '<json>'` plans the sweep (suite, device, settings
including `rounds`, output directory) and runs it with `sweep.run_sweep`, whose
rounds visit the cases in a seeded order that depends only on the case list and
the seed. Before each case it announces the case on its protocol channel and
waits for `go` on stdin; after it, it reports `done`. The driver gives the two
sides turns case by case, so baseline and candidate measure the same case
seconds apart and see the same machine, instead of whole sweeps minutes apart.

Protocol (JSON lines on the original stdout; everything else the process prints
goes to stderr): {"ready": case_id, "step": i, "total": n} -> reads "go";
{"done": case_id, "status": ...}; at the end {"finished": rows}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    args: dict[str, Any] = json.loads(argv[0])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library and torch output must not corrupt the protocol
    from mlabench.measure.envinfo import resolve_device
    from mlabench.settings import SweepSettings
    from mlabench.suites import load_suite
    from mlabench.sweep import Overrides, plan_sweep, run_sweep

    settings = SweepSettings.check(args.get("settings", {}), "ab")
    plan = plan_sweep(load_suite(args["suite"]), resolve_device(args.get("device", "auto")),
                      Overrides(settings=settings), Path(args["out"]))

    def on_start(case: Any, step: int, total: int) -> None:
        proto.write(json.dumps({"ready": case.case_id, "step": step, "total": total}) + "\n")
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(3)  # the driver went away: stop without writing half a run

    def on_end(result: Any) -> None:
        proto.write(json.dumps({"done": result.row["case_id"], "status": result.status}) + "\n")

    outcome = run_sweep(plan, resume=False, probe=False, on_start=on_start, on_end=on_end)
    proto.write(json.dumps({"finished": len(outcome.results)}) + "\n")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
