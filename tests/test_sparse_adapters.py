"""flashmla-sparse (dsa) and fa3-qv (gla-absorbed) without their libraries or a GPU.

Each library call is replaced by a float64 torch stand-in that computes the attention from
the arguments it is given, as the documented API reads them (FlashMLA: 656-byte FP8 rows in
64-token pages, pool-row `indices`, -1 none; FlashAttention-3: q and qv against k_cache and
v_cache, bottom-right causal), so a wrong cache, scale or index gives a wrong answer. Here
both libraries are missing, which is the `skipped` case.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from mlabench.backends import BACKENDS, StepInputs, fa3_qv, flashmla_sparse
from mlabench.backends.library import LoadFailure
from mlabench.case import Case
from mlabench.config import AttentionShape
from mlabench.errors import UnsupportedError
from mlabench.measure import accuracy as acc
from mlabench.measure.timing import TimingSettings
from mlabench.runner import RunContext, run_case
from mlabench.variants import VARIANT_CLASSES, AttentionVariant, build_variant
from mlabench.variants.kvquant import LatentFP8

CPU = torch.device("cpu")
BATCH, SEQ_LEN, NEW = 2, 130, 2  # three 64-token pages per sequence; two new tokens per step
# DeepSeek's latent widths (656-byte FP8 rows) with a tiny everything else; topk < T so rows are dropped.
DSA_TINY = AttentionShape(hidden_size=64, num_heads=4, head_dim=16, rope_head_dim=64, v_head_dim=16,
                          q_lora_rank=24, kv_lora_rank=512, index_heads=2, index_head_dim=64, topk=40,
                          dtype="bfloat16", kv_dtype="fp8_e4m3", name="dsa-tiny")
# Two latent heads of 32 and the 64-wide RoPE key FlashAttention-3's qv kernels take.
GLA_TINY = AttentionShape(hidden_size=64, num_heads=4, head_dim=16, rope_head_dim=64, v_head_dim=16,
                          q_lora_rank=0, kv_lora_rank=64, num_latent_heads=2, dtype="bfloat16", name="gla-tiny")


def step_for(variant: str, shape: AttentionShape, backend: str, seq_len: int = SEQ_LEN,
             new: int = NEW) -> tuple[AttentionVariant, Case, StepInputs]:
    shape = VARIANT_CLASSES[variant].normalize_shape(shape)
    dtype = getattr(torch, shape.dtype)
    m = build_variant(variant, shape, "cpu", dtype, seed=3)
    m.allocate_cache(BATCH, seq_len)
    m.fill_cache_random(seq_len - new, seed=4)
    x = torch.randn(BATCH, new, shape.hidden_size, generator=torch.Generator().manual_seed(6)).to(dtype)
    case = Case("test", shape.name, variant, backend, "decode", "cpu", BATCH, seq_len, new, shape)
    return m, case, StepInputs(x, seq_len - new)


def softmax_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                   visible: torch.Tensor) -> torch.Tensor:
    """float64 attention of q (S, H, D) over k (T, D), v (T, dv) where `visible` (S, T)."""
    scores = torch.einsum("shd,td->sht", q.double(), k.double()) * scale
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double()


# --- flashmla-sparse ---------------------------------------------------------------------------


class FakeFlashMLASparse:
    """flash_mla's sparse FP8 decode in float64: rows of the whole pool named by `indices`."""

    __version__ = "stand-in"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get_mla_metadata(self, cache_seqlens: torch.Tensor, num_q_tokens_per_head_k: int, num_heads_k: int,
                         num_heads_q: int | None = None, is_fp8_kvcache: bool = False,
                         topk: int | None = None) -> tuple[str, str]:
        self.metadata = (num_q_tokens_per_head_k, num_heads_k, num_heads_q, is_fp8_kvcache, topk)
        return "tile-metadata", "num-splits"

    def flash_mla_with_kvcache(self, q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                               cache_seqlens: torch.Tensor, head_dim_v: int, tile_scheduler_metadata: Any,
                               num_splits: Any, softmax_scale: float | None = None, causal: bool = False,
                               is_fp8_kvcache: bool = False,
                               indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        assert indices is not None and not causal, "FlashMLA: causal must be false with indices"
        assert is_fp8_kvcache and k_cache.dtype == torch.float8_e4m3fn and k_cache.shape[1:] == (64, 1, 656)
        assert indices.dtype == torch.int32 and indices.shape[-1] % 64 == 0
        assert (tile_scheduler_metadata, num_splits) == ("tile-metadata", "num-splits")
        scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5  # the library's default
        self.calls.append({"k_cache": k_cache, "scale": softmax_scale, "indices": indices})
        rows = LatentFP8("fp8_e4m3", head_dim_v, 64).decode(k_cache.view(torch.uint8).view(-1, 656), torch.float64)
        out = torch.empty(*q.shape[:3], head_dim_v, dtype=torch.float64)
        for b in range(q.shape[0]):
            for s in range(q.shape[1]):
                picked = indices[b, s][indices[b, s] >= 0].long()
                kv = rows[picked]
                visible = torch.ones(1, kv.shape[0], dtype=torch.bool)
                out[b, s] = softmax_attend(q[b, s][None], kv, kv[:, :head_dim_v], scale, visible)[0]
        return out.to(q.dtype), torch.zeros(1)


def test_flashmla_sparse_equals_the_float64_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeFlashMLASparse()
    monkeypatch.setattr(flashmla_sparse, "_load_library", lambda: (fake, None))
    m, case, inputs = step_for("dsa", DSA_TINY, "flashmla-sparse")
    prepared = BACKENDS["flashmla-sparse"].prepare(m, case, inputs)
    assert prepared.detail == "flashmla-sparse:stand-in,block=64,topk=64"
    assert fake.metadata == (NEW * 4, 1, 4, True, 64)
    ref = acc.reference_output(m, inputs.x, inputs.start_pos, unquantized=False)  # on the cache as stored
    out = prepared.fn()
    assert acc.compare(out, ref, "bfloat16").ok
    call = fake.calls[-1]
    assert call["scale"] == m.shape.mla_softmax_scale != 576**-0.5
    assert all(c["k_cache"] is call["k_cache"] for c in fake.calls)  # the pool is built once, then a view
    # Every named pool row holds the stored bytes of the sequence row dsa chose (translated through
    # the block table); 40 chosen, the rest of 64 none.
    chosen = m._step_indices
    assert chosen.shape == (BATCH, NEW, 40) and (call["indices"][..., 40:] == -1).all()
    pool = call["k_cache"].view(torch.uint8).view(-1, 656)
    stored = m.cache_tensors()["kv_cache"]
    for b in range(BATCH):
        assert torch.equal(pool[call["indices"][b, :, :40].long()], stored[b][chosen[b].long()])


def test_pool_slots_follow_the_block_table() -> None:
    table = torch.tensor([[4, 0], [1, 3]], dtype=torch.int32)
    idx = torch.tensor([[[0, 70, -1]], [[63, 64, 5]]], dtype=torch.int32)
    slots = flashmla_sparse.pool_slots(idx, table, 64, 4)
    assert slots.tolist() == [[[256, 6, -1, -1]], [[127, 192, 69, -1]]]


def test_flashmla_sparse_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flashmla_sparse, "_load_library", lambda: (FakeFlashMLASparse(), None))
    prepare = BACKENDS["flashmla-sparse"].prepare
    with pytest.raises(UnsupportedError, match="reads an fp8_e4m3 latent cache only .* not bfloat16"):
        prepare(*step_for("dsa", DSA_TINY.replace(kv_dtype=""), "flashmla-sparse"))
    with pytest.raises(UnsupportedError, match="fp8_e4m3 latent cache only .* not fp8_e5m2"):
        prepare(*step_for("dsa", DSA_TINY.replace(kv_dtype="fp8_e5m2"), "flashmla-sparse"))
    with pytest.raises(UnsupportedError, match="kv_lora_rank 512 and rope_head_dim 64"):
        prepare(*step_for("dsa", DSA_TINY.replace(kv_lora_rank=256), "flashmla-sparse"))

    class DenseOnly:  # a FlashMLA release before sparse decode
        def get_mla_metadata(self, cache_seqlens: Any, q_per_kv_head: int, kv_heads: int) -> None: ...

        def flash_mla_with_kvcache(self, q: Any, k_cache: Any, block_table: Any, cache_seqlens: Any,
                                   head_dim_v: Any, md: Any, num_splits: Any, softmax_scale: Any = None,
                                   causal: bool = False, is_fp8_kvcache: bool = False) -> None: ...

    monkeypatch.setattr(flashmla_sparse, "_load_library", lambda: (DenseOnly(), None))
    with pytest.raises(UnsupportedError, match="no sparse decode"):
        prepare(*step_for("dsa", DSA_TINY, "flashmla-sparse"))


def test_the_triton_core_still_refuses_dsa_fp8_rows() -> None:
    with pytest.raises(UnsupportedError, match="latent rows alone"):
        BACKENDS["triton"].prepare(*step_for("dsa", DSA_TINY, "triton"))


# --- fa3-qv --------------------------------------------------------------------------------------


class FakeFA3:
    """flash_attn_interface.flash_attn_with_kvcache in float64: scores = scale * (q . k + qv . v) over
    each sequence's first cache_seqlens rows, bottom-right causal, output P @ v."""

    __version__ = "stand-in"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def flash_attn_with_kvcache(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                k: Any = None, v: Any = None, qv: torch.Tensor | None = None,
                                cache_seqlens: torch.Tensor | None = None, softmax_scale: float | None = None,
                                causal: bool = False, **unused: Any) -> torch.Tensor:
        assert qv is not None and cache_seqlens is not None and k is None and v is None and not unused
        assert k_cache.dim() == v_cache.dim() == 4 and k_cache.shape[2] == v_cache.shape[2] == 1  # one KV head
        scale = softmax_scale if softmax_scale is not None else (q.shape[-1] + qv.shape[-1]) ** -0.5
        self.calls.append({"k_cache": k_cache, "v_cache": v_cache, "scale": softmax_scale, "causal": causal})
        b, s, h, _ = q.shape
        out = torch.empty(b, s, h, v_cache.shape[-1], dtype=torch.float64)
        for i in range(b):
            n = int(cache_seqlens[i])
            kc, vc = k_cache[i, :n, 0].double(), v_cache[i, :n, 0].double()
            scores = (torch.einsum("shd,td->sht", q[i].double(), kc)
                      + torch.einsum("shd,td->sht", qv[i].double(), vc)) * scale
            if causal:
                visible = torch.arange(n)[None, :] <= (n - s + torch.arange(s))[:, None]
                scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
            out[i] = torch.softmax(scores, dim=-1) @ vc
        return out.to(q.dtype)


def test_fa3_qv_equals_the_float64_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeFA3()
    monkeypatch.setattr(fa3_qv, "_load_library", lambda: (fake, None))
    m, case, inputs = step_for("gla-absorbed", GLA_TINY, "fa3-qv")
    prepared = BACKENDS["fa3-qv"].prepare(m, case, inputs)
    assert prepared.detail == "fa3-qv:stand-in,latent_heads=2"
    ref = acc.reference_output(m, inputs.x, inputs.start_pos)
    calls = len(fake.calls)
    out = prepared.fn()
    assert acc.compare(out, ref, "bfloat16").ok
    assert len(fake.calls) - calls == 2  # one call per latent head
    cache = m.cache_tensors()["kv_cache"]  # (B, T_max, 2*32 + 64)
    for j, call in enumerate(fake.calls[-2:]):
        assert call["scale"] == m.shape.mla_softmax_scale != (64 + 32) ** -0.5 and call["causal"] is True
        # Views of the module's cache, never copies: latent head j's columns and the shared RoPE key.
        assert call["v_cache"].data_ptr() == cache[:, :, 32 * j].data_ptr()
        assert call["k_cache"].data_ptr() == cache[:, :, 64].data_ptr()
        assert call["k_cache"].stride()[:2] == call["v_cache"].stride()[:2] == cache.stride()[:2]
    assert torch.equal(prepared.fn(), out)


def test_fa3_qv_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fa3_qv, "_load_library", lambda: (FakeFA3(), None))
    prepare = BACKENDS["fa3-qv"].prepare
    with pytest.raises(UnsupportedError, match="64-wide RoPE key .* not 32"):
        prepare(*step_for("gla-absorbed", GLA_TINY.replace(rope_head_dim=32), "fa3-qv"))
    with pytest.raises(UnsupportedError, match="bf16 or fp16, not torch.float32"):
        prepare(*step_for("gla-absorbed", GLA_TINY.replace(dtype="float32"), "fa3-qv"))
    with pytest.raises(UnsupportedError, match="cannot read an fp8_e4m3 latent cache: .*query's dtype"):
        prepare(*step_for("gla-absorbed", GLA_TINY.replace(kv_dtype="fp8_e4m3"), "fa3-qv"))

    class FA2Style:  # a flash_attn_with_kvcache without the qv argument
        def flash_attn_with_kvcache(self, q: Any, k_cache: Any, v_cache: Any, cache_seqlens: Any = None,
                                    softmax_scale: Any = None, causal: bool = False) -> None: ...

    monkeypatch.setattr(fa3_qv, "_load_library", lambda: (FA2Style(), None))
    with pytest.raises(UnsupportedError, match="no qv path"):
        prepare(*step_for("gla-absorbed", GLA_TINY, "fa3-qv"))


# --- both: missing libraries ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "module", "missing"), [
    ("flashmla-sparse", flashmla_sparse, "flash_mla is not installed (build it from source"),
    ("fa3-qv", fa3_qv, "flash_attn_interface is not installed (build FlashAttention-3 from source"),
])
def test_missing_or_broken_library(monkeypatch: pytest.MonkeyPatch, name: str, module: Any, missing: str) -> None:
    spec = BACKENDS[name]
    assert spec.modes == ("decode",) and spec.fused
    if module._load_library()[0] is None:  # the real case here: not installed
        assert spec.unavailable(CPU).startswith(missing)
        with pytest.raises(UnsupportedError, match="is not installed"):
            variant, shape = ("dsa", DSA_TINY) if name == "flashmla-sparse" else ("gla-absorbed", GLA_TINY)
            spec.prepare(*step_for(variant, shape, name))
    monkeypatch.setattr(module, "_load_library", lambda: (SimpleNamespace(), None))
    reason = spec.unavailable(CPU)
    assert reason is not None and "not cpu" in reason and "SM90" in reason
    monkeypatch.setattr(module, "_load_library", lambda: (None, "flash_x failed to import: OSError: libcuda"))
    assert spec.unavailable(torch.device("cuda")) == "flash_x failed to import: OSError: libcuda"


@pytest.mark.parametrize(("name", "module", "variant", "shape"), [
    ("flashmla-sparse", flashmla_sparse, "dsa", DSA_TINY),
    ("fa3-qv", fa3_qv, "gla-absorbed", GLA_TINY),
])
def test_rows_say_skipped_when_missing_and_unsupported_when_broken(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                   module: Any, variant: str,
                                                                   shape: AttentionShape) -> None:
    case = step_for(variant, shape, name)[1]
    ctx = RunContext(device=CPU, timing=TimingSettings(budget_s=0.002, warmup_s=0.0, min_samples=2))
    monkeypatch.setattr(module, "_load_library", lambda: (None, "lib is not installed (hint)"))
    row = run_case(case, ctx).row
    assert row["status"] == "skipped" and "lib is not installed (hint)" in row["error"]
    monkeypatch.setattr(module, "_load_library", lambda: (None, LoadFailure("lib failed to import: OSError: x")))
    row = run_case(case, ctx).row
    assert row["status"] == "unsupported" and "OSError: x" in row["error"]
