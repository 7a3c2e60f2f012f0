"""`flashinfer`: FlashInfer's paged MLA attention (`BatchMLAPagedAttentionWrapper`) for mla-absorbed decode.

FlashInfer takes the absorbed query split in two, q_nope (N, H, d_c) and q_pe (N, H, d_r),
and the paged cache split the same way, ckv (num_pages, page, d_c) and kpe (num_pages,
page, d_r). It reads every one of them through its strides, so all four are views: of the
step's (B, S, H, d_c + d_r) query and of one page pool (num_pages, 64, d_c + d_r) that
`prepare` builds from our latent cache, the same pool layout FlashMLA reads.

`prepare` also calls `plan(...)` once (FlashInfer compiles its kernels just in time there
on first use: that is `compile_ms`) with the case's fixed lengths: S new tokens and T
cached tokens per sequence, 64-token pages, causal (FlashInfer aligns the mask
bottom-right, as ours), and the scale tau. The timed closure runs the whole variant step;
its core mirrors the step's new latent rows into the pool and calls `run`.

Available where `flashinfer` imports and the GPU is SM80 or newer (its MLA kernels: FA2
from SM80, FA3 on SM90). Served shapes: d_c = 512, d_r = 64 (DeepSeek), bf16 or fp16.
Option `flashinfer_backend`: auto | fa2 | fa3 (FlashInfer's own choice by default).
An FP8 latent cache (`kv_dtype`) is `unsupported`: the wrapper has no reader for DeepSeek's
FP8 rows with per-token tile scales.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from mlabench.backends.latent import library_prepared, register_library_backend
from mlabench.backends.library import gpu_unavailable, optional_library, required
from mlabench.backends.paged import BLOCK_SIZE, PagedCache, PagedLatentCore, check_deepseek_latent
from mlabench.backends.registry import Prepared, StepInputs
from mlabench.case import Case
from mlabench.errors import UsageError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.latent_step import LatentStep

INSTALL_HINT = "pip install flashinfer-python"
WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended split-k workspace
FLASHINFER_BACKENDS = ("auto", "fa2", "fa3")


# (flashinfer, None) or (None, why not); flashinfer.mla is the part this backend calls.
_load_library = optional_library("flashinfer", INSTALL_HINT, "mla")


def flashinfer_unavailable(device: torch.device) -> str | None:
    """None where FlashInfer's MLA kernels can run on `device`, else one short reason."""
    return gpu_unavailable(_load_library, device, "an SM80 or newer", range(8, 100), "its MLA kernels")


class FlashInferMLACore(PagedLatentCore):
    """A LatentStep -> o_lat through a planned BatchMLAPagedAttentionWrapper on views of the page pool."""

    library = "flashinfer"
    # FlashInfer's MLA wrapper takes ckv and kpe pages of one dtype with at most a per-tensor
    # scale: it has no reader for per-token tile scales beside the latent.
    fp8_unsupported = ("BatchMLAPagedAttentionWrapper takes ckv and kpe in one dtype without per-token scales, "
                       "not DeepSeek's FP8 rows (fp32 scale per 128 latent values, bf16 RoPE key)")

    def __init__(self, module: AttentionVariant, inputs: StepInputs, sm_scale: float):
        super().__init__(module, inputs, BLOCK_SIZE)
        d_c = module.shape.kv_lora_rank
        self.sm_scale = sm_scale  # fixed at plan time
        self.ckv = self.paged.pool[..., :d_c]  # (num_pages, 64, d_c) view
        self.kpe = self.paged.pool[..., d_c:]  # (num_pages, 64, d_r) view
        self.wrapper: Any = None  # planned in prepare

    def check(self, step: LatentStep) -> None:
        if step.scale != self.sm_scale:
            raise RuntimeError(f"flashinfer core planned for scale {self.sm_scale}; called with scale {step.scale}")

    def attend(self, step: LatentStep) -> Tensor:
        b, s, h, d = step.q.shape
        qf = step.q.reshape(b * s, h, d)  # (B*S, H, D): ragged rows in sequence order, as qo_indptr says
        o = self.wrapper.run(qf[..., : step.d_c], qf[..., step.d_c:], self.ckv, self.kpe)
        return o.reshape(b, s, h, step.d_c)  # (B, S, H, d_c)


def plan_arguments(paged: PagedCache, q_len: int) -> dict[str, Tensor]:
    """FlashInfer's CSR description of the batch: query rows, pages and lengths per sequence (int32).
    A ragged batch lists each sequence's own whole pages only."""
    b = paged.block_table.shape[0]
    device = paged.block_table.device
    lengths = paged.seq_lens
    pages = [-(-n // paged.block_size) for n in lengths]
    seqs = torch.arange(b + 1, dtype=torch.int32, device=device)
    kv_indptr = torch.tensor([0, *itertools.accumulate(pages)], dtype=torch.int32, device=device)
    return {
        "qo_indptr": seqs * q_len,  # (B + 1,) sequence b's query rows are [b*S, (b+1)*S)
        "kv_indptr": kv_indptr,  # (B + 1,) sequence b's pages are kv_indices[indptr[b] : indptr[b+1]]
        "kv_indices": torch.cat([paged.block_table[i, :n] for i, n in enumerate(pages)]),  # (total pages,)
        "kv_len_arr": torch.tensor(lengths, dtype=torch.int32, device=device),  # (B,)
    }


def flashinfer_backend_option(case: Case) -> str:
    value = case.option("flashinfer_backend", "auto")
    if value not in FLASHINFER_BACKENDS:
        raise UsageError(f"flashinfer_backend: unknown {value!r} (choose from {', '.join(FLASHINFER_BACKENDS)})")
    return value


@register_library_backend(FlashInferMLACore, unavailable=flashinfer_unavailable,
                          options={"flashinfer_backend": flashinfer_backend_option},
                          description="FlashInfer paged MLA attention (BatchMLAPagedAttentionWrapper) on a paged "
                                      "copy of the latent cache")
def prepare_flashinfer(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    check_deepseek_latent(module, "flashinfer")
    backend = flashinfer_backend_option(case)
    lib = required(_load_library)
    x, start = inputs.x, inputs.start_pos
    sh = module.shape
    dtype = module.weight_dtype
    scale = sh.mla_softmax_scale
    core = FlashInferMLACore(module, inputs, scale)

    def plan() -> None:
        # FlashInfer builds its kernels just in time in plan()/the first run: without nvcc, or
        # with an API other than this one, that is `unsupported` with the reason, not `error`.
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=x.device)
        wrapper = lib.mla.BatchMLAPagedAttentionWrapper(workspace, backend=backend)
        args = plan_arguments(core.paged, x.shape[1])
        wrapper.plan(
            args["qo_indptr"], args["kv_indptr"], args["kv_indices"], args["kv_len_arr"],
            sh.num_heads, sh.kv_lora_rank, sh.rope_head_dim, core.block_size,
            True,  # causal, bottom-right aligned
            scale,
            dtype,  # q_data_type
            dtype,  # kv_data_type
        )
        core.wrapper = wrapper

    return library_prepared("flashinfer", lib, core, lambda: module(x, start, core),
                            f"{backend},page={core.block_size}" + (",native" if core.native else ""), plan)
