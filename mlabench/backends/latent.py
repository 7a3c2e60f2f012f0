"""Fused latent cores (triton, flashmla, flashinfer): the part of their contract they share.

MLAAbsorbed calls its core as every variant does, core(q', latent, latent[..., :d_c], tau,
True) with `latent` a (B, T, 1, d_c + d_r) view of its cache tensor. A fused kernel wants the
cache tensor itself, the step's position and lengths: `LatentCore` turns the core's
arguments into that record, a `LatentStep` (variants/latent_step.py), checking the in-place contract
on the first call only (so timed calls pay for no checks), with `cache_seqlens` allocated
once per case. A kernel's core is then `attend(step)`; paged cores also mirror the step's
new rows into their pool first (`step`, see paged.py).

An FP8 latent cache (`kv_dtype`, DeepSeek's 656-byte rows at DeepSeek dims) is read as stored
by a core whose `fp8_kv` lists its format: the module then hands the core its byte rows, not
a dequantized copy (`MLAAbsorbed.reads_stored_cache`), and the LatentStep says the format.
Any other core refuses the case as `unsupported` with `fp8_unsupported`.

`first_call_ms` times a backend's first call (kernel JIT compile or load, lazy scheduling):
that is the row's `compile_ms`, never latency. A third-party library's core registers its
backend with `register_library_backend` (the name and variants are the core's) and ends its
`prepare` with `library_prepared`: the plan and first call inside `loading`, timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mlabench.backends.library import loading
from mlabench.backends.registry import OptionCheck, Prepare, Prepared, StepInputs, register_backend
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.kvquant import LatentFP8, PerCacheFP8, latent_rows
from mlabench.variants.latent_step import LatentStep
from mlabench.variants.mla import MLAAbsorbed


def first_call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of `fn`, synchronized on CUDA so the kernel's work is in it."""
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


class LatentCore:
    """core(q', latent, latent[..., :d_c], tau, True) -> o_lat (B, S, H, d_c) through `attend(LatentStep)`.

    Called as the core of a whole step (`__call__`, which runs `step`), or alone on the
    core's inputs in scope "core" (`alone`, which runs `attend`)."""

    library = "a fused latent core"  # for messages: the backend's name
    fp8_kv: tuple[str, ...] = ()  # the FP8 latent formats the kernel reads as stored
    fp8_unsupported = "its kernel reads the latent in the compute dtype only"  # why not, when empty
    serves: tuple[type[AttentionVariant], ...] = (MLAAbsorbed,)  # variants with a `latent_step`
    # Whether the kernel reads the latent's FP8 rows when the cache holds other tensors too
    # (dsa's indexer key, a PerCacheFP8): only a kernel that never reads those others may.
    reads_latent_beside_others = False

    def __init__(self, module: AttentionVariant, inputs: StepInputs):
        if not isinstance(module, self.serves):
            names = " and ".join(cls.name for cls in self.serves)
            raise UnsupportedError(f"{self.library} serves {names} only, not {module.name}")
        kv_dtype = module.shape.kv_dtype
        if kv_dtype and kv_dtype not in self.fp8_kv:
            why = self.fp8_unsupported if not self.fp8_kv else f"it reads {', '.join(self.fp8_kv)} only"
            raise UnsupportedError(f"{self.library} cannot read an {kv_dtype} latent cache: {why}")
        if kv_dtype and not isinstance(module, MLAAbsorbed):
            raise UnsupportedError(f"{self.library} reads FP8 latent rows of one latent head (mla-absorbed's, "
                                   f"dsa's), not {module.name}'s")
        alone = isinstance(module.kv_store, LatentFP8)
        beside = self.reads_latent_beside_others and isinstance(module.kv_store, PerCacheFP8) \
            and latent_rows(module.kv_store)
        if kv_dtype and not (alone or beside):
            raise UnsupportedError(f"{self.library} reads an FP8 cache only as DeepSeek's latent rows alone, "
                                   f"which {module.name} does not store")
        module.reads_stored_cache = bool(kv_dtype)
        b, s = inputs.x.shape[:2]
        self.module = module
        lengths = module.step_lengths(b, inputs.start_pos, s)  # ragged: each sequence's own length
        if lengths is None:
            self.cache_seqlens = torch.full((b,), inputs.start_pos + s, dtype=torch.int32, device=inputs.x.device)
        else:
            self.cache_seqlens = lengths.to(torch.int32)
        # A paged case's cache is a page pool: the kernel reads it through the block table, in place.
        module.read_pages_in_core = module.cache_map is not None and module.cache_map.page_size > 0
        self._checked = False

    def latent_step(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> LatentStep:
        step = self.module.latent_step(q, k, v, scale, causal, self.cache_seqlens, check=not self._checked)
        if not self._checked:
            self.check(step)
            self._checked = True
        return step

    # `lengths` (a ragged step's) is already in cache_seqlens, made once for the case.
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                 lengths: Tensor | None = None) -> Tensor:
        return self.step(self.latent_step(q, k, v, scale, causal))

    def alone(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
              lengths: Tensor | None = None) -> Tensor:
        """The kernel alone (scope "core"): no cache mirroring, which the step `prepare` ran once did."""
        return self.attend(self.latent_step(q, k, v, scale, causal))

    def check(self, step: LatentStep) -> None:
        """A backend's own once-per-case checks of the first step (beyond the shared contract)."""

    def step(self, step: LatentStep) -> Tensor:
        """The core inside a whole step."""
        return self.attend(step)

    def attend(self, step: LatentStep) -> Tensor:
        """The kernel: o_lat (B, S, H, d_c)."""
        raise NotImplementedError

    @property
    def extra_cache_bytes(self) -> int | None:
        """Bytes of a second copy of the cache the core keeps (None: it reads the module's own)."""
        return None


def register_library_backend(core: type[LatentCore], *, description: str,
                             unavailable: Callable[[torch.device], str | None],
                             options: Mapping[str, OptionCheck] | None = None) -> Callable[[Prepare], Prepare]:
    """Register the `prepare` of a fused decode backend built on a library's `core`: named after the
    core's `library`, serving the variants in its `serves`, decode steps only."""
    return register_backend(core.library, description=description, variants=tuple(cls.name for cls in core.serves),
                            modes=("decode",), fused=True, unavailable=unavailable, options=options)


def library_prepared(library: str, lib: object, core: LatentCore, fn: Callable[[], Tensor], detail: str,
                     plan: Callable[[], object] = lambda: None) -> Prepared:
    """The Prepared of a backend whose `core` calls the third-party library `lib` (imported as
    `library`): `plan` (a schedule, a wrapper's plan) and the first call of the step `fn` run inside
    `loading(library)`, so a build without this GPU's kernels or with another API is `unsupported`
    rather than `error`, and are timed as compile_ms (just-in-time builds, lazy scheduling). The
    detail is `<backend>:<library version>,<detail>`."""

    def plan_and_first_call() -> None:
        with loading(library):
            plan()
            fn()

    compile_ms = first_call_ms(plan_and_first_call, core.cache_seqlens.device)
    version = getattr(lib, "__version__", "?")
    return Prepared(fn=fn, detail=f"{core.library}:{version},{detail}", compile_ms=compile_ms, core=core.alone,
                    extra_cache_bytes=core.extra_cache_bytes)
