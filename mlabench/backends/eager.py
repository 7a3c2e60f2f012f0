"""`eager`: the variant's own forward in plain PyTorch ops, the semantics every other path must match."""

from __future__ import annotations

from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.variants.base import AttentionVariant


@register_backend("eager", description="plain PyTorch ops: explicit matmuls and an fp32 softmax")
def prepare_eager(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    x, start = inputs.x, inputs.start_pos
    return Prepared(fn=lambda: module(x, start), detail="eager", core=module.native_core)
