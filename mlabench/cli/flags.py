"""Option groups: the flags several commands share, declared once as dataclasses.

A command takes one parameter per group (`measure: MeasureFlags`); `with_flag_groups` lays the
groups' fields out as the command's options for typer and hands the command one filled
dataclass per group. So `run` and `sweep` spell, explain and check a shared flag the same
way, and a command body reads `measure.settings()` instead of a dozen loose parameters.
Metavars are words (LIST, N, SECONDS, PATH), never Python types.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer


def with_flag_groups(body: Callable[..., Any]) -> Callable[..., Any]:
    """A typer command from `body`: each parameter whose type is a dataclass becomes that
    dataclass's fields as options (in order); other parameters are kept as they are."""
    hints = typing.get_type_hints(body, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for name, param in inspect.signature(body).parameters.items():
        kind = hints[name]
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            params.append(param.replace(annotation=kind, kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        groups[name] = kind
        field_hints = typing.get_type_hints(kind, include_extras=True)
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                     annotation=field_hints[f.name]) for f in dataclasses.fields(kind)]
    names = [p.name for p in params]
    assert len(names) == len(set(names)), f"{body.__name__}: an option is declared twice"

    @functools.wraps(body)
    def command(**values: Any) -> Any:
        filled = {name: cls(**{f.name: values.pop(f.name) for f in dataclasses.fields(cls)})
                  for name, cls in groups.items()}
        return body(**filled, **values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _opt(help: str, *names: str, metavar: str | None = None, show_default: bool = False, **kw: Any) -> Any:
    return typer.Option(*names, help=help, metavar=metavar, show_default=show_default, **kw)


@dataclass
class MeasureFlags:
    """Measurement settings (`run` and `sweep`); unset ones come from the suite, else settings.SweepSettings."""

    budget: Annotated[float | None, _opt("Seconds of sampling per case, 0-3600 [default: the suite's, else 0.5; "
                                         "`run`: 1].", metavar="SECONDS")] = None
    warmup: Annotated[float | None, _opt("Seconds of warm-up per case, 0-600 [default: the suite's, else 0.1].",
                                         metavar="SECONDS")] = None
    min_samples: Annotated[int | None, _opt("Fewest samples per case, 1-100000 [default: the suite's, else 10].",
                                            metavar="N")] = None
    max_samples: Annotated[int | None, _opt("Most samples kept per case, 1-100000 [default: the suite's, else "
                                            "1000].", metavar="N")] = None
    timeout: Annotated[float | None, _opt(
        "Wall limit of one case in seconds; past it the case ends as a `timeout` row at the next check between "
        "calls (a call in flight is never cut) [default: the suite's, else 300].", metavar="SECONDS")] = None
    threads: Annotated[int | None, _opt("CPU threads, 0-1024 (0 = torch default, all cores) [default: the "
                                        "suite's, else 1].", metavar="N")] = None
    cuda_graph: Annotated[bool | None, _opt("GPU: time inside a CUDA graph (hot) [default: the suite's, else no].",
                                            "--cuda-graph/--no-cuda-graph")] = None
    accuracy: Annotated[bool | None, _opt("Check every case against the float64 reference [default: the suite's, "
                                          "else yes].", "--accuracy/--no-accuracy")] = None
    seed: Annotated[int | None, _opt("Seed for weights and inputs [default: the suite's, else 0].",
                                     metavar="N")] = None
    probe: Annotated[bool, _opt("Measure roofline peaks first (else the spec table).", "--probe/--no-probe",
                                show_default=True)] = True

    def settings(self, **more: Any) -> dict[str, Any]:
        """The settings given on the command line (unset ones left out), each checked and named
        by its flag in a refusal."""
        from mlabench.settings import SweepSettings

        given = {"budget_s": self.budget, "warmup_s": self.warmup, "min_samples": self.min_samples,
                 "max_samples": self.max_samples, "threads": self.threads, "cuda_graph": self.cuda_graph,
                 "accuracy": self.accuracy, "seed": self.seed, "timeout_s": self.timeout, **more}
        settings: dict[str, Any] = {}
        for key, value in given.items():
            if value is not None:
                settings.update(SweepSettings.check({key: value}, SweepSettings.flag(key)))
        return settings


@dataclass
class BackendFlags:
    """Backend options: `--option NAME=VALUE` and its dedicated spellings."""

    option: Annotated[list[str] | None, _opt(
        "Backend option NAME=VALUE, e.g. num_splits=4 (repeatable; `mlabench list` shows each backend's options; a "
        "case takes only its own backend's).", metavar="NAME=VALUE")] = None
    compile_mode: Annotated[str | None, _opt(
        "Same as --option compile_mode=MODE: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs.",
        metavar="MODE")] = None
    sdpa_kernel: Annotated[str | None, _opt("Same as --option sdpa_kernel=KERNEL: auto, flash, efficient, cudnn, "
                                            "math.", metavar="KERNEL")] = None

    def options(self) -> dict[str, Any]:
        from mlabench.cli.common import parse_options

        return parse_options(self.option, {"compile_mode": self.compile_mode, "sdpa_kernel": self.sdpa_kernel})


@dataclass
class ProfileFlags:
    """Profiling after a case's timed samples, never among them (docs/profiling.md)."""

    profile: Annotated[Path | None, _opt(
        "After each case's timed samples, profile a few more steps into DIR: a Perfetto trace "
        "(<case_id>.trace.json.gz) and a per-kernel breakdown (<case_id>.breakdown.csv).", metavar="DIR")] = None
    profile_match: Annotated[list[str] | None, _opt(
        "With --profile: profile only the cases matching FIELD=VALUE[,FIELD=VALUE...] (key columns, e.g. "
        "'variant=mla-absorbed,backend=triton'; repeatable: any may match) [default: every case].",
        metavar="MATCH")] = None
    memory_snapshot: Annotated[bool, _opt(
        "With --profile: also dump the CUDA allocator's history around the profiled steps (<case_id>.memory.pickle, "
        "for pytorch.org/memory_viz); CUDA only.", "--memory-snapshot")] = False
    nvtx: Annotated[bool, _opt("NVTX ranges around warm-up, each timed call and each profiled step, for nsys/ncu "
                               "(CUDA only; the rows are marked profiled).", "--nvtx")] = False

    def request(self) -> Any:
        from mlabench.profiling.request import build_request

        return build_request(self.profile, self.profile_match, self.memory_snapshot, self.nvtx)


# What a sweep or a frontier imports before its first case (torch among them).
RUN_IMPORTS = ("mlabench.sweep", "mlabench.cli.sweep_view", "mlabench.executors.ray_exec")


@dataclass
class ExecutorFlags:
    """Where a sweep's cases run."""

    executor: Annotated[str | None, _opt(
        "Where cases run: local (this process), isolate (a child process per case) or ray (a Ray task per case, "
        "one GPU each) [default: local].", metavar="NAME")] = None
    isolate: Annotated[bool, _opt("Run each case in a fresh child process: a crash or a hang becomes that case's "
                                  "row (the same as --executor isolate).", "--isolate")] = False
    ray_address: Annotated[str | None, _opt("Ray cluster to use with --executor ray [default: start a local Ray "
                                            "instance].", metavar="ADDRESS")] = None
    ray_accelerator: Annotated[str | None, _opt("With --executor ray: run every case on GPUs of this kind only, as "
                                                "Ray names it (e.g. H100, H200).", metavar="KIND")] = None

    def chosen(self) -> str:
        from mlabench.executors.choice import choose_executor

        return choose_executor(self.executor, self.isolate, self.ray_address, self.ray_accelerator)

    def start_ray_early(self) -> None:
        """With --executor ray, join or start Ray before the command's own imports, a thread
        importing them meanwhile: the seconds a local instance takes to start (mostly waiting
        for its processes) and the seconds torch takes to import overlap."""
        if self.chosen() == "ray":
            from mlabench.executors.ray_cluster import join

            join(self.ray_address, RUN_IMPORTS)


def close_executor(runner: Any) -> None:
    """Close the executor made so far; none yet, stop the Ray instance `start_ray_early` started."""
    if runner is not None:
        runner.close()
    else:
        from mlabench.executors.ray_cluster import leave

        leave()
