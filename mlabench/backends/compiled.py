"""`compiled`: torch.compile (inductor) of one whole variant step, prefill or decode.

The compiled function is the same step the eager backend times, `module(x, start_pos)`,
with the case's tensors closed over: static shapes (`dynamic=False`) and one graph
(`fullgraph=True`, so a graph break fails loudly at prepare time instead of timing a
half-eager step). Compilation happens in `prepare`, by calling the function until a call
compiles nothing new; that time is `compile_ms`, never latency.

Options (`case.option`):
- `compile_mode`: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs.
  reduce-overhead adds nothing but CUDA graphs, so it is `unsupported` off CUDA.
- `cpp_min_chunk_size` (CPU only, default 32768): the least work per thread for which
  inductor's C++ code opens an OpenMP parallel region. With inductor's own default (512)
  the tiny loops of a decode step get parallel regions: the mla-absorbed step compiles to
  3 regions holding 3 `omp for` and 7 `omp single` blocks, a dozen barriers per call. When
  the CPU also runs other work, each barrier waits for a descheduled thread; on a 2-vCPU
  machine with one competing busy process the compiled tiny mla-absorbed decode step took
  130 ms per call (mean of 50) against 2.9 ms eager, while the same step is 3-4x faster
  than eager on an idle CPU. Eager ATen ops stay serial below at::internal::GRAIN_SIZE
  (32768 elements); using the same threshold here removes those regions for small steps
  and keeps large ones parallel, so compiled and eager parallelize the same work. 0 keeps
  inductor's default. (Contention hurts every multi-threaded path; CPU timings want a
  thread count below the number of free cores.)

Timing scope "core" compiles the attention core instead (`eager_attention`, static shapes,
one graph) and swaps it into the step: the step then runs its projections eagerly and the
compiled core, and `Prepared.core` is the compiled core the runner times alone. The
CUDA-graph compile modes are not offered there: the cache views the core reads would have
to be static graph inputs, and `--cuda-graph` already times the core without launch overhead.

Each `prepare` starts from an empty dynamo cache (`torch.compiler.reset()`): one sweep
compiles the same step function for many cases, and past `recompile_limit` (8) dynamo
would silently run later cases eagerly; the reset also frees the graphs, and on CUDA the
CUDA-graph memory pools, of earlier cases (a Prepared of an earlier case recompiles if
called again). On-disk inductor caches are kept, so a case compiled before in the same
environment reports a shorter `compile_ms`. In CUDA-graph modes the output lives in the
graph's memory and the next call overwrites it: use it before calling again.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.errors import UnsupportedError, UsageError
from mlabench.variants.attention import eager_attention
from mlabench.variants.base import AttentionVariant

COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# ATen's at::internal::GRAIN_SIZE: eager elementwise ops run serially below this many elements.
ATEN_GRAIN_SIZE = 32768
# A static-shape step compiles on the first call; cudagraph modes also warm up and record on
# the second and third. More calls than this that still compile mean shapes or guards move.
_MAX_WARMUP_CALLS = 6


def compile_mode(case: Case) -> str:
    """The case's `compile_mode` option, validated."""
    mode = case.option("compile_mode", "default")
    if mode not in COMPILE_MODES:
        raise UsageError(f"compile_mode: unknown mode {mode!r} (choose from {', '.join(COMPILE_MODES)})")
    return mode


def cpp_min_chunk_size(case: Case) -> int:
    value = case.option("cpp_min_chunk_size", ATEN_GRAIN_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"cpp_min_chunk_size: must be an integer >= 0, got {value!r}")
    return value


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process (grows by one per compile or recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _plain_tensors(module: AttentionVariant) -> Iterator[Tensor]:
    """Tensors the module holds outside its parameters and buffers (cache, RoPE tables)."""
    for name, value in vars(module).items():
        if name in ("_parameters", "_buffers", "_modules"):
            continue
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, Tensor):
                yield item


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], Tensor], device: torch.device, min_calls: int) -> float:
    """Call `fn` until a call compiles nothing new (at least `min_calls` calls); return the ms spent.

    Raises RuntimeError if it keeps recompiling: the timed calls would then be measuring
    compilation.
    """
    start = time.perf_counter()
    for i in range(_MAX_WARMUP_CALLS):
        before = compiled_graph_count()
        fn()
        _sync(device)
        if i + 1 >= min_calls and compiled_graph_count() == before:
            return (time.perf_counter() - start) * 1e3
    raise RuntimeError(f"torch.compile still recompiled on call {_MAX_WARMUP_CALLS}: guards keep failing")


@register_backend(
    "compiled",
    description="torch.compile (inductor) of the whole step; static shapes, one graph, compile time apart",
    options={"compile_mode": compile_mode, "cpp_min_chunk_size": cpp_min_chunk_size},
    preload=("mlabench.backends.inductor_warmup",),
)
def prepare_compiled(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    mode = compile_mode(case)
    chunk = cpp_min_chunk_size(case)
    x, start = inputs.x, inputs.start_pos
    device = x.device
    if start > 0 and not type(module).supports_decode:
        raise UnsupportedError(f"{module.name} has no incremental decode (prefill only)")
    cudagraphs = device.type == "cuda" and mode in _CUDAGRAPH_MODES
    if mode == "reduce-overhead" and device.type != "cuda":
        raise UnsupportedError(f"compile_mode reduce-overhead only adds CUDA graphs; there are none on {device.type}")

    torch.compiler.reset()
    if case.scope == "core":
        return _prepare_core(module, inputs, mode, chunk)
    if cudagraphs:
        # CUDA graphs copy every input whose address may change into a private buffer on each
        # replay; the cache, the RoPE tables and x keep their addresses for the whole case, and
        # the in-place cache write must land in the real cache, not in such a copy.
        for t in (x, *_plain_tensors(module)):
            torch._dynamo.mark_static_address(t)

    def step() -> Tensor:
        return module(x, start)

    detail = f"compile:{mode}"
    compiled = torch.compile(step, dynamic=False, fullgraph=True, **_compile_kwargs(device, mode, chunk))
    if device.type == "cpu" and chunk > 0 and _has_min_chunk_size():
        detail += f",cpp_min_chunk_size={chunk}"

    if cudagraphs:
        def fn() -> Tensor:
            # A new "iteration" for CUDA-graph trees: the previous call's output may be reused.
            torch.compiler.cudagraph_mark_step_begin()
            return compiled()
    else:
        fn = compiled

    compile_ms = warm_up(fn, device, min_calls=3 if cudagraphs else 2)
    return Prepared(fn=fn, detail=detail, compile_ms=compile_ms)


def _has_min_chunk_size() -> bool:
    return hasattr(importlib.import_module("torch._inductor").config.cpp, "min_chunk_size")


def _compile_kwargs(device: torch.device, mode: str, chunk: int) -> dict[str, object]:
    """torch.compile's mode or options: on CPU the mode expanded into options plus cpp.min_chunk_size
    (`mode` and `options` are exclusive in torch.compile)."""
    if device.type != "cpu":
        return {"mode": mode}
    inductor = importlib.import_module("torch._inductor")  # loaded by the first compile anyway
    options = dict(inductor.list_mode_options(mode, dynamic=False))
    if chunk > 0 and _has_min_chunk_size():
        options["cpp.min_chunk_size"] = chunk
    return {"options": options}


def _prepare_core(module: AttentionVariant, inputs: StepInputs, mode: str, chunk: int) -> Prepared:
    """Scope "core": compile `eager_attention` for this case's core inputs and swap it into the step."""
    x, start = inputs.x, inputs.start_pos
    device = x.device
    if device.type == "cuda" and mode in _CUDAGRAPH_MODES:
        raise UnsupportedError(f"compile_mode {mode} adds CUDA graphs to the whole step; in scope core use "
                               "--cuda-graph timing instead")
    # A variant with its own core (tpa-factorized) has that compiled; the rest the generic one.
    native = eager_attention if type(module).generic_core else module.native_core
    core = torch.compile(native, dynamic=False, fullgraph=True, **_compile_kwargs(device, mode, chunk))
    q, k, v, scale, causal = module.core_inputs(x, start)
    lengths = module.step_lengths(x.shape[0], start, x.shape[1])  # a ragged step's, else None
    compile_ms = warm_up(lambda: core(q, k, v, scale, causal, lengths), device, min_calls=2)
    detail = f"compile-core:{mode}"
    if device.type == "cpu" and chunk > 0 and _has_min_chunk_size():
        detail += f",cpp_min_chunk_size={chunk}"
    return Prepared(fn=lambda: module(x, start, core), detail=detail, compile_ms=compile_ms, core=core)
