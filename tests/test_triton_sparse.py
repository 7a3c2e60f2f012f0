"""The Triton MLA decode kernel's sparse path (DeepSeek Sparse Attention): with an int32
`indices` tensor per query token (-1 = none) it equals a float64 eager gather of those latent
rows, and on a dsa module it equals the variant's own masked core. Runs under Triton's
interpreter on CPU (tests/conftest.py); cache slack is NaN so a stray read shows."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mlabench.config import AttentionShape  # noqa: E402
from mlabench.kernels.mla_decode import mla_decode, triton_unavailable_reason  # noqa: E402
from mlabench.variants import build_variant  # noqa: E402
from mlabench.variants.attention import eager_attention  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_REASON = triton_unavailable_reason(DEVICE)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"mla_decode unavailable: {_REASON}")
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def gather_reference(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, dv: int, scale: float) -> torch.Tensor:
    """float64: for each (b, s), softmax over the rows indices[b, s] names (>= 0) of kv[b]."""
    B, S, H, _ = q.shape
    out = torch.empty(B, S, H, dv, dtype=torch.float64)
    for b in range(B):
        for s in range(S):
            rows = indices[b, s][indices[b, s] >= 0].long().cpu()
            k = kv[b, rows].double().cpu()  # (n, D): only the named rows, never the NaN slack
            scores = torch.einsum("hd,nd->hn", q[b, s].double().cpu(), k) * scale
            out[b, s] = torch.softmax(scores, dim=-1) @ k[:, :dv]
    return out


def _inputs(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, S, H, dv, dr, t_max, k = 2, 2, 5, 32, 16, 48, 12
    seqlens = torch.tensor([40, 9], dtype=torch.int32)
    q = torch.randn(B, S, H, dv + dr, generator=g).to(dtype)
    kv = torch.full((B, t_max, dv + dr), float("nan"))
    indices = torch.full((B, S, k), -1, dtype=torch.int32)
    for b in range(B):
        n = int(seqlens[b])
        kv[b, :n] = torch.randn(n, dv + dr, generator=g)
        for s in range(S):
            visible = n - S + s + 1
            pick = torch.randperm(visible, generator=g)[: min(k, visible)]
            indices[b, s, : len(pick)] = pick.to(torch.int32)  # the short sequence leaves -1 slots
        indices[b] = indices[b][:, torch.randperm(k, generator=g)]  # -1 anywhere in the list
    return q.to(DEVICE), kv.to(dtype).to(DEVICE), seqlens.to(DEVICE), indices.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kernel_with_indices_equals_eager_gather(dtype: torch.dtype, num_splits: int) -> None:
    q, kv, seqlens, indices = _inputs(dtype, seed=num_splits)
    assert (indices == -1).any() and (indices >= 0).any()
    out = mla_decode(q, kv, seqlens, 32, 0.2, num_splits=num_splits, block_h=16, block_n=16, indices=indices)
    ref = gather_reference(q, kv, indices, 32, 0.2)
    assert torch.isfinite(out).all()
    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], f"rel err {err:.2e}"


def test_sparse_kernel_equals_dsa_core_on_a_dsa_module() -> None:
    shape = AttentionShape(hidden_size=64, num_heads=4, head_dim=8, rope_head_dim=16, v_head_dim=8, q_lora_rank=24,
                           kv_lora_rank=32, index_heads=16, index_head_dim=16, topk=5, dtype="float32")
    m = build_variant("dsa", shape, DEVICE, torch.float32, seed=2)
    m.allocate_cache(2, 20)
    x = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    m(x[:, :18], 0)
    q, k, v, scale, mask = m.core_inputs(x[:, 18:], 18)  # decode, two new tokens
    _, indices = m.index_topk(m.index_scores(x[:, 18:], m.q_a_layernorm(m.q_a_proj(x[:, 18:])), 18))
    seqlens = torch.full((2,), 20, dtype=torch.int32, device=DEVICE)
    out = mla_decode(q, m.cache_tensors()["kv_cache"], seqlens, 32, scale, num_splits=2, indices=indices)
    want = eager_attention(q, k, v, scale, mask)
    assert ((out - want).norm() / want.norm()).item() < 1e-5
