"""Tensor parallelism, measured: a case with tp = N runs on N ranks of torch.distributed, each
holding its shard of the layer and of the KV cache (`shard.py`), joined by one all-reduce per
step (`rank.py`, `collective.py`), the ranks started once per degree (`pool.py`)."""

from mlabench.tp.dispatch import close_rank_groups, run_any_case

__all__ = ["close_rank_groups", "run_any_case"]
