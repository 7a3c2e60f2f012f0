"""torch.compile's once-per-process start-up, done on import: the module a fork server preloads
for `compiled` cases (`register_backend(preload=...)`), so that each isolated case's child
compiles from a warm start instead of paying it again.

In a fresh process the first compile costs seconds beyond the compile itself: importing
dynamo and inductor (about 1.8 s on a 2-core CPU), hashing torch's and Triton's sources for
inductor's cache keys, and probing which vector instruction set the C++ compiler can target
(it builds and runs a test program per candidate). The results are cached in the process, so
a child forked after this module ran inherits them; on that CPU the first compile in such a
child took 1.8 s against 3.8 s.

Each step is best effort: these are inductor's internals, and a step that is missing or fails
here only leaves its cost to the child. Nothing here touches CUDA (a fork server must not:
its children could not use the GPU) or starts a thread.
"""

from __future__ import annotations

import contextlib

import torch._dynamo  # noqa: F401  (the import is the warm-up)
import torch._inductor.compile_fx  # noqa: F401


def _warm() -> None:
    with contextlib.suppress(Exception):
        from torch._inductor.codecache import torch_key

        torch_key()  # a hash of torch's sources, part of every inductor cache key
    with contextlib.suppress(Exception):
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        pick_vec_isa()  # compiles and runs a test program per vector ISA
    with contextlib.suppress(Exception):
        from triton.runtime.cache import triton_key

        triton_key()  # a hash of Triton's sources, part of the FX graph cache key


_warm()
