"""The Triton MLA decode kernel serving Grouped Latent Attention: latent heads as a grid axis over
the one cache [c_1 .. c_G, k_pe], against a float64 reference per latent head (NaN-poisoned
slack, ragged lengths, S > 1, split and single-split), and gla-absorbed on the triton backend
reading the module's cache in place."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from test_triton_mla_decode import _TOL, DEVICE, assert_close_strict, reference  # noqa: E402

from mlabench.backends import BACKENDS, triton_mla  # noqa: E402
from mlabench.kernels.mla_decode import mla_decode, triton_unavailable_reason  # noqa: E402

pytestmark = pytest.mark.skipif(triton_unavailable_reason(DEVICE) is not None,
                                reason="the triton kernel cannot run here")


def _gla_inputs(lengths: list[int], S: int, H: int, G: int, dg: int, dr: int, dtype: torch.dtype,
                seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, t_max = len(lengths), max(lengths) + 5
    q = torch.randn(B, S, H, dg + dr, generator=g)  # per head [q_lat (d_g), q_pe (d_r)]
    kv = torch.randn(B, t_max, G * dg + dr, generator=g)  # per row [c_1 .. c_G, k_pe]
    for b, n in enumerate(lengths):
        kv[b, n:] = float("nan")  # slack: must never be read
    return q.to(DEVICE, dtype), kv.to(DEVICE, dtype), torch.tensor(lengths, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize(("G", "S", "num_splits", "dtype"), [
    (2, 1, 1, torch.float32), (2, 2, 3, torch.float32), (4, 1, 2, torch.float32), (2, 2, 2, torch.bfloat16),
])
def test_latent_heads_grid_axis_matches_per_head_reference(G: int, S: int, num_splits: int,
                                                           dtype: torch.dtype) -> None:
    H, dg, dr, scale = 8, 32, 16, 0.11
    q, kv, seqlens = _gla_inputs([37, 20], S, H, G, dg, dr, dtype, seed=G * 10 + S)
    out = mla_decode(q, kv, seqlens, dg, scale, num_splits, latent_heads=G)
    assert out.shape == (2, S, H, dg) and torch.isfinite(out).all()
    hg = H // G
    for j in range(G):  # latent head j serves query heads [j*H/G, (j+1)*H/G) over [c_j, k_pe]
        kv_j = torch.cat((kv[..., j * dg:(j + 1) * dg], kv[..., G * dg:]), dim=-1)
        ref = reference(q[:, :, j * hg:(j + 1) * hg], kv_j, seqlens, dg, scale)
        assert_close_strict(out[:, :, j * hg:(j + 1) * hg], ref, *_TOL[dtype], what=f"latent head {j}")


def test_latent_heads_are_checked() -> None:
    q, kv, seqlens = _gla_inputs([9], 1, 8, 2, 16, 16, torch.float32, seed=1)
    with pytest.raises(ValueError, match="latent_heads"):
        mla_decode(q, kv, seqlens, 16, 0.1, latent_heads=3)  # 3 does not divide H = 8
    with pytest.raises(ValueError, match="last dim"):
        mla_decode(q, kv, seqlens, 16, 0.1, latent_heads=4)  # rows are 2 latent heads wide, not 4


def test_gla_absorbed_on_triton_reads_the_cache_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Its accuracy against the float64 reference is test_backends.py's registry matrix.)"""
    from test_backends import setup_step

    seen: list[tuple[torch.Tensor, dict]] = []
    real = triton_mla.mla_decode

    def spy(q: torch.Tensor, kv: torch.Tensor, seqlens: torch.Tensor, **kw: object) -> torch.Tensor:
        seen.append((kv, kw))
        return real(q, kv, seqlens, **kw)

    monkeypatch.setattr(triton_mla, "mla_decode", spy)
    module, case, inputs = setup_step("gla-absorbed", "triton", "decode", 2, num_splits=2)
    # The fused step never assembles the per-latent-head K the generic core needs.
    monkeypatch.setattr(type(module), "core_inputs", lambda *a, **k: pytest.fail("K assembled in a fused step"))
    BACKENDS["triton"].prepare(module, case, inputs)  # runs the step once (its compile_ms)
    cache = module.cache_tensors()["kv_cache"]  # (B, T_max, h_c*d_g + d_r)
    kv, kw = seen[-1]
    assert kv.data_ptr() == cache.data_ptr() and kv.stride() == cache.stride()  # a view, no copy
    sh = module.shape
    assert kw["latent_heads"] == sh.num_latent_heads == 2
    assert kw["head_dim_v"] == sh.kv_lora_rank // sh.num_latent_heads
