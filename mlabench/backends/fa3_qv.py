"""`fa3-qv`: gla-absorbed decode through FlashAttention-3's `qv` path (Hopper).

FlashAttention-3's `flash_attn_with_kvcache` takes, beside q against k_cache, a second query
`qv` against v_cache: scores = softmax_scale * (q . k + qv . v), output P @ v. That is MLA's
absorbed attention in MQA mode with q = q_pe against the RoPE key and qv = q_nope W_UK
against the latent, which is also V. GLA's absorbed decode is that once per latent head: query
heads [j H/h_c, (j+1) H/h_c) read latent head c_j and the shared RoPE key, so the adapter calls

    flash_attn_with_kvcache(q_pe_j, k_cache, v_cache_j, qv=q_lat_j, cache_seqlens=lengths,
                            softmax_scale=tau, causal=True)

for j = 0 .. h_c - 1 and concatenates the heads. k_cache (B, T_max, 1, d_r) and v_cache_j
(B, T_max, 1, d_g) are views of the module's cache [c_1 .. c_h_c | k_pe]: no copy. The scale
is always explicit: FlashAttention-3's default, (d_r + d_g)**-0.5, is not the model's tau
(d_qk**-0.5 times the YaRN factor). Its causal mask is bottom-right aligned, as ours.

Available where `flash_attn_interface` (FlashAttention-3, built from hopper/) imports and the
GPU is SM90. Unsupported: an FP8 cache (the qv path reads K and V in the query's dtype), a
query not 16-bit, a RoPE key not 64 wide (the qv kernels are built for head dim 64), and a
flash_attn_interface without `qv`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mlabench.backends.latent import LatentCore, library_prepared, register_library_backend
from mlabench.backends.library import gpu_unavailable, optional_library, require_keywords, required
from mlabench.backends.registry import Prepared, StepInputs
from mlabench.case import Case
from mlabench.errors import UnsupportedError
from mlabench.variants.base import AttentionVariant
from mlabench.variants.gla import GLAAbsorbed
from mlabench.variants.latent_step import LatentStep

INSTALL_HINT = ("build FlashAttention-3 from source: git clone https://github.com/Dao-AILab/flash-attention; "
                "cd flash-attention/hopper; python setup.py install")

_load_library = optional_library("flash_attn_interface", INSTALL_HINT)  # (module, None) or (None, why not)

QV_HEAD_DIM = 64  # q's (the RoPE key's) width in FlashAttention-3's qv kernels
_DTYPES = (torch.bfloat16, torch.float16)


def fa3_unavailable(device: torch.device) -> str | None:
    """None where FlashAttention-3 can run on `device`, else one short reason."""
    return gpu_unavailable(_load_library, device, "an SM90 (Hopper)", (9,), "its qv path")


class FA3QVCore(LatentCore):
    """A GLA LatentStep -> o_lat (B, S, H, d_g): one qv call per latent head, on views of the cache."""

    library = "fa3-qv"
    fp8_unsupported = "FlashAttention-3's qv path reads K and V in the query's dtype"
    serves = (GLAAbsorbed,)

    def __init__(self, module: AttentionVariant, inputs: StepInputs, lib: Any):
        super().__init__(module, inputs)
        self.lib = lib

    def attend(self, step: LatentStep) -> Tensor:
        g, d_g = step.latent_heads, step.d_c
        per = step.q.shape[2] // g  # query heads per latent head
        cache = step.cache[: step.batch, :, None, :]  # (B, T_max, 1, h_c*d_g + d_r): lengths bound the reads
        k_cache = cache[..., g * d_g:]  # the shared RoPE key
        outs = []
        for j in range(g):
            q = step.q[:, :, j * per:(j + 1) * per]  # (B, S, H/h_c, d_g + d_r) = [q_lat, q_pe]
            outs.append(self.lib.flash_attn_with_kvcache(
                q[..., d_g:], k_cache, cache[..., j * d_g:(j + 1) * d_g], qv=q[..., :d_g],
                cache_seqlens=step.cache_seqlens, softmax_scale=step.scale, causal=True))
        return outs[0] if g == 1 else torch.cat(outs, dim=2)


def check_qv_case(module: AttentionVariant) -> None:
    """What FlashAttention-3's qv kernels take: gla-absorbed's 64-wide RoPE key and a 16-bit query."""
    if not isinstance(module, GLAAbsorbed):
        raise UnsupportedError(f"fa3-qv serves gla-absorbed only, not {module.name}")
    sh = module.shape
    if sh.rope_head_dim != QV_HEAD_DIM:
        raise UnsupportedError(f"fa3-qv: FlashAttention-3's qv kernels take a {QV_HEAD_DIM}-wide RoPE key "
                               f"(q's head dim), not {sh.rope_head_dim}")
    if module.weight_dtype not in _DTYPES:
        raise UnsupportedError(f"fa3-qv takes bf16 or fp16, not {module.weight_dtype}")


@register_library_backend(FA3QVCore, unavailable=fa3_unavailable,
                          description="FlashAttention-3's qv decode (MLA's MQA mode) once per GLA latent head, "
                                      "on views of the cache (SM90)")
def prepare_fa3_qv(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    check_qv_case(module)
    lib = required(_load_library)
    require_keywords(lib, "this flash_attn_interface has no qv path", flash_attn_with_kvcache="qv")
    core = FA3QVCore(module, inputs, lib)
    x, start = inputs.x, inputs.start_pos

    def fn() -> Tensor:
        return module.forward_fused(x, start, core)  # the core reads [c_j, k_pe] in place: no K to assemble

    # A build without SM90 kernels or without qv fails in the first call: `unsupported`.
    return library_prepared("flash_attn_interface", lib, core, fn, f"latent_heads={module.shape.num_latent_heads}")
