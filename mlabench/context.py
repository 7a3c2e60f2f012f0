"""Ragged batches: a context distribution instead of one length for every sequence.

The `seq_len` axis takes an integer (every sequence holds that many tokens) or a spec:

    uniform:1024-32768                 lengths drawn uniformly from [1024, 32768] (at most 2**24)
    lognormal:median=4096,sigma=1      exp(N(ln 4096, 1)), rounded, clipped to [1, 131072]
    list:900/4096/17000                explicit lengths, cycled over the batch

A spec's lengths count the whole context after the step (the q_len new tokens included),
as `seq_len` does. They are drawn with a generator seeded from the case itself (the
canonical spec text and the batch size), so one case key always means the same lengths on
every machine and in every round; the case's `seq_len` is their maximum (the cache's
slot count per sequence), its `context` column the canonical spec.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from mlabench.errors import UsageError

DISTRIBUTIONS = ("uniform", "lognormal", "list")
LOGNORMAL_CAP = 131072  # a lognormal tail is unbounded; one sequence must still fit a real cache
# The longest context a uniform or list spec may name: far past any model's window, and far
# inside the int64 a length is drawn as and the int32 a kernel indexes a sequence's slots with.
MAX_CONTEXT = 1 << 24
MAX_RAGGED_BATCH = 1 << 16  # a ragged batch's lengths are drawn when it is planned and listed in its row
_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?"


@dataclass(frozen=True)
class ContextSpec:
    """A parsed spec; `text` is its canonical form (the `context` key column)."""

    kind: str
    params: tuple[float, ...]  # uniform: (low, high); lognormal: (median, sigma); list: the lengths

    @property
    def text(self) -> str:
        if self.kind == "uniform":
            return f"uniform:{int(self.params[0])}-{int(self.params[1])}"
        if self.kind == "lognormal":
            return f"lognormal:median={_num(self.params[0])},sigma={_num(self.params[1])}"
        return "list:" + "/".join(str(int(v)) for v in self.params)

    def lengths(self, batch: int) -> tuple[int, ...]:
        """`batch` context lengths (each >= 1), the same for the same (spec, batch) everywhere."""
        if self.kind == "list":
            return tuple(int(self.params[i % len(self.params)]) for i in range(batch))
        # Seeded from the case, not the run: the lengths are part of what the key names.
        rng = np.random.default_rng(zlib.crc32(f"{self.text}|{batch}".encode()))
        if self.kind == "uniform":
            low, high = (int(v) for v in self.params)
            return tuple(int(v) for v in rng.integers(low, high + 1, size=batch))
        median, sigma = self.params
        draws = np.exp(rng.normal(math.log(median), sigma, size=batch))
        return tuple(int(min(max(round(v), 1), LOGNORMAL_CAP)) for v in draws)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def is_spec(value: object) -> bool:
    """A seq_len axis value that is a distribution rather than one length."""
    return isinstance(value, str)


def parse_context(text: str) -> ContextSpec:
    """Parse a spec; UsageError naming the problem for anything else."""
    if not isinstance(text, str) or ":" not in text:
        raise UsageError(f"seq_len: {text!r} is neither a length nor a distribution "
                         f"(uniform:LOW-HIGH, lognormal:median=M,sigma=S or list:L1/L2/...)")
    kind, _, body = text.strip().partition(":")
    kind, body = kind.strip().lower(), body.strip()
    if kind not in DISTRIBUTIONS:
        raise UsageError(f"seq_len: unknown distribution {kind!r} in {text!r} (choose from {', '.join(DISTRIBUTIONS)})")
    if not body:
        raise UsageError(f"seq_len: distribution {text!r} is empty")
    if kind == "uniform":
        m = re.fullmatch(r"([0-9]+)\s*-\s*([0-9]+)", body)
        if not m:
            raise UsageError(f"seq_len: {text!r}: uniform takes LOW-HIGH, two positive integers")
        low, high = int(m.group(1)), int(m.group(2))
        if low < 1 or high < low or high > MAX_CONTEXT:
            raise UsageError(f"seq_len: {text!r}: uniform needs 1 <= LOW <= HIGH <= {MAX_CONTEXT}")
        return ContextSpec("uniform", (low, high))
    if kind == "lognormal":
        m = re.fullmatch(rf"median\s*=\s*({_NUMBER})\s*,\s*sigma\s*=\s*({_NUMBER})", body)
        if not m:
            raise UsageError(f"seq_len: {text!r}: lognormal takes median=M,sigma=S")
        median, sigma = float(m.group(1)), float(m.group(2))
        if not (1 <= median <= LOGNORMAL_CAP) or not (0 <= sigma <= 4):
            raise UsageError(f"seq_len: {text!r}: lognormal needs 1 <= median <= {LOGNORMAL_CAP} and 0 <= sigma <= 4")
        return ContextSpec("lognormal", (median, sigma))
    items = [p.strip() for p in body.split("/")]
    if not all(re.fullmatch(r"[0-9]+", p) for p in items):
        raise UsageError(f"seq_len: {text!r}: list takes positive integers separated by '/'")
    values = tuple(int(p) for p in items)
    if min(values) < 1 or max(values) > MAX_CONTEXT:
        raise UsageError(f"seq_len: {text!r}: every length must be >= 1 and <= {MAX_CONTEXT}")
    return ContextSpec("list", values)


def lengths_summary(lengths: tuple[int, ...], ragged: bool = True) -> dict[str, float | str | None]:
    """The per-row columns: context_min, context_mean, context_max, and a ragged batch's lengths."""
    return {"context_min": min(lengths), "context_mean": sum(lengths) / len(lengths), "context_max": max(lengths),
            "context_lengths": "/".join(map(str, lengths)) if ragged else None}
