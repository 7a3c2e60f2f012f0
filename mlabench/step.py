"""One timed call of an attention layer as the cost model sees it: batch, cached and new tokens.

A `Step` is plain data that both the variants (their FLOP and byte formulas) and the
cost model (`analytic`) take, so it sits below both and imports nothing of the project.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One timed call: `new_tokens` queries at positions [context, context + new_tokens)."""

    batch: int
    context: int  # P: tokens already in the cache
    new_tokens: int  # S
    causal: bool = True

    @property
    def total(self) -> int:  # T = P + S
        return self.context + self.new_tokens

    @property
    def attended_pairs(self) -> int:
        """(query, key) pairs per sequence and head: query s sees P + s + 1 keys when causal."""
        p, s = self.context, self.new_tokens
        return s * p + s * (s + 1) // 2 if self.causal else s * self.total


def prefill_step(batch: int, seq_len: int) -> Step:
    return Step(batch=batch, context=0, new_tokens=seq_len)


def decode_step(batch: int, seq_len: int, q_len: int) -> Step:
    """seq_len counts the whole context including the q_len new tokens."""
    return Step(batch=batch, context=seq_len - q_len, new_tokens=q_len)


def ragged_steps(lengths: Sequence[int], q_len: int) -> list[Step]:
    """A ragged decode step as one Step per distinct length L (batch: how many sequences hold L),
    each with its q_len new tokens at [L - q_len, L)."""
    return [Step(batch=n, context=length - q_len, new_tokens=q_len) for length, n in sorted(Counter(lengths).items())]
