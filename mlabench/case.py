"""A case: one point of a sweep's grid, frozen and hashable; its key is its identity.

Resume skips finished keys, shards split on keys, compare joins on keys: the key
is the `schema.KEY_COLUMNS` projection of a case, nothing else.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from mlabench import schema
from mlabench.config import AttentionShape
from mlabench.context import parse_context
from mlabench.layout import CacheLayout, parse_layout
from mlabench.step import Step, decode_step, prefill_step

Mode = Literal["prefill", "decode"]
MODES: tuple[str, ...] = ("prefill", "decode")
# What is timed: "step" the whole layer (projections, RoPE, cache write, core, output
# projection), "core" the attention core alone on the prepared query and the cache.
Scope = Literal["step", "core"]
SCOPES: tuple[str, ...] = ("step", "core")


@dataclass(frozen=True)
class Case:
    suite: str
    model: str
    variant: str
    backend: str
    mode: Mode
    device: str
    batch: int
    seq_len: int  # total context after this step (decode: including the q_len new tokens)
    q_len: int  # new tokens per call (prefill: seq_len)
    shape: AttentionShape  # already normalized for the variant (mha: G = H, mqa: G = 1)
    scope: Scope = "step"
    # Options of this case's backend (compile_mode, num_splits, ...), sorted by name: part of
    # the identity, since a max-autotune compile and a default one are different measurements.
    options: tuple[tuple[str, Any], ...] = ()
    # Ragged batch: the canonical context spec (context.py); seq_len is then its longest
    # sequence. '' = every sequence holds seq_len tokens.
    context: str = ""
    cache_layout: str = ""  # 'paged:PAGE_SIZE' (layout.py); '' = contiguous
    tp: int = 1  # tensor-parallel degree: ranks, each holding its shard of the layer (mlabench.tp)

    @property
    def lengths(self) -> tuple[int, ...] | None:
        """Each sequence's tokens after the step for a ragged case (None: all seq_len)."""
        return parse_context(self.context).lengths(self.batch) if self.context else None

    @property
    def layout(self) -> CacheLayout:
        return parse_layout(self.cache_layout) if self.cache_layout else CacheLayout()

    @property
    def dist_backend(self) -> str:
        """The torch.distributed backend joining a tensor-parallel case's ranks ('' at tp 1)."""
        if self.tp == 1:
            return ""
        return "nccl" if self.device.startswith("cuda") else "gloo"

    @property
    def dtype(self) -> str:
        return self.shape.dtype

    @property
    def step(self) -> Step:
        if self.mode == "prefill":
            return prefill_step(self.batch, self.seq_len)
        return decode_step(self.batch, self.seq_len, self.q_len)

    @property
    def new_tokens(self) -> int:
        return self.batch * self.step.new_tokens

    @property
    def key(self) -> dict[str, Any]:
        """The case's key columns (schema.KEY_COLUMNS, in order): the grid's axes, then the shape's
        key fields as config declares them, then the backend options and serving axes."""
        values = {
            "suite": self.suite, "model": self.model, "variant": self.variant, "backend": self.backend,
            "mode": self.mode, "scope": self.scope, "dtype": self.dtype, "kv_dtype": self.shape.cache_dtype,
            "device": self.device, "batch": self.batch, "seq_len": self.seq_len, "q_len": self.q_len,
            **self.shape.key_values(),
            "options": self.options_text, "context": self.context, "cache_layout": self.cache_layout,
            "tp": self.tp, "dist_backend": self.dist_backend,
        }
        return {c: values[c] for c in schema.KEY_COLUMNS}

    @property
    def options_text(self) -> str:
        """The options in one canonical text: 'compile_mode=max-autotune;num_splits=4' ('' for none)."""
        return ";".join(f"{k}={schema.normalize_key_value(v)}" for k, v in self.options)

    @functools.cached_property  # hashes every key field: planning a large grid asks several times per case
    def case_id(self) -> str:
        return schema.case_id(self.key)

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    def label(self) -> str:
        """Short human description for progress lines."""
        return (f"{self.model} {self.variant}/{self.backend} {self.mode} b={self.batch} "
                f"T={self.seq_len}" + (f" q={self.q_len}" if self.mode == "decode" else "")
                + f" {self.dtype}" + (f" kv={self.shape.kv_dtype}" if self.shape.kv_dtype else "")
                + (" core" if self.scope == "core" else "")
                + (f" ctx={self.context}" if self.context else "")
                + (f" {self.cache_layout}" if self.cache_layout else "")
                + (f" tp={self.tp}" if self.tp > 1 else ""))
