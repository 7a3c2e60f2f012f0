"""Executors: where a sweep's cases run. The driver (sweep.run_sweep) alone writes rows.

An executor turns the list of unfinished cases into results as they finish, in any
order; the driver appends each to the run directory as it arrives, so a stop keeps
every finished row whichever executor ran it.

- `local`: in this process, one case after another (the default).
- `isolate`: one case after another, each in a child forked from a warm server (executors/isolate.py).
- `ray`: each case a Ray task whose worker runs it isolated (executors/ray_exec.py).

Modules: `protocol` (the `Executor` protocol and the `OnStart` callback type), `local` (the
in-process and isolate executors, which inherit `OnThisMachine`'s answers to the driver's
questions), `choice` (which executor the flags ask for, and making it), `isolate` and
`forkserver` (a case in a fresh child process), `ray_exec` (the driver's side of Ray) and
`ray_task` (what a Ray worker runs). This package file imports nothing: a Ray worker imports
`ray_task` without torch.
"""
