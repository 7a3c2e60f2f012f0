"""`--shard auto`: this array task's slice of the grid, from Slurm's job-array variables.

Slurm numbers array tasks from `--array=MIN-MAX[:STEP]` (0- or 1-based, as the script
says); task K of N is its position in that range, counted from 1 as `--shard K/N` is.
An array with gaps (`--array=1,5,9`) has no such position: it is refused, naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mlabench.errors import UsageError

VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
STEP = "SLURM_ARRAY_TASK_STEP"  # optional: 1 when unset


def slurm_shard(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(K, N) for `--shard auto`, from SLURM_ARRAY_TASK_{ID,COUNT,MIN} (and _STEP when set); a value
    that is not an integer is named."""
    env = os.environ if environ is None else environ
    missing = [v for v in VARIABLES if not env.get(v, "").strip()]
    if missing:
        raise UsageError(f"--shard auto: not in a Slurm array job ({', '.join(missing)} not set); "
                         "give --shard K/N, or submit with sbatch --array")
    numbers = []
    for name in (*VARIABLES, STEP):
        text = env.get(name, "").strip() or "1"  # only the step may be unset
        try:
            numbers.append(int(text))
        except ValueError:
            raise UsageError(f"--shard auto: {name}={text!r} is not an integer") from None
    task, count, first, step = numbers
    offset = task - first
    if count < 1 or step < 1 or offset < 0 or offset % step or offset // step >= count:
        raise UsageError(f"--shard auto: task {task} is not in a contiguous array of {count} tasks from {first} "
                         f"(step {step}); use --array=MIN-MAX[:STEP] or give --shard K/N")
    return offset // step + 1, count
