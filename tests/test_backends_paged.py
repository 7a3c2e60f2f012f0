"""FlashMLA and FlashInfer backends without their libraries or a GPU.

What can be checked anywhere: the reasons they give when unavailable, the paged-cache
helpers against the contiguous cache they mirror, and the whole prepare/core plumbing
with each library call replaced by a float64 torch stand-in that reads the page pool
exactly as the documented API says (block table, cache_seqlens, bottom-right causal mask,
explicit softmax scale). The kernels themselves run only on a GPU with the library.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from mlabench.backends import BACKENDS, StepInputs, flashinfer, flashmla
from mlabench.backends.paged import (
    PagedCache,
    block_table_for,
    from_pages,
    pages_for_step,
    slot_indices,
    to_pages,
    write_rows,
)
from mlabench.case import Case
from mlabench.config import AttentionShape, from_name
from mlabench.errors import UnsupportedError
from mlabench.variants import AttentionVariant, build_variant

CPU = torch.device("cpu")
# DeepSeek's latent widths (what both libraries serve) with tiny everything else.
DS_TINY = AttentionShape(hidden_size=64, num_heads=4, head_dim=16, rope_head_dim=64, v_head_dim=16,
                         q_lora_rank=0, kv_lora_rank=512, dtype="bfloat16", name="ds-tiny")
BATCH, SEQ_LEN = 2, 130  # three 64-token pages per sequence, the last holding 2 tokens


def attend(q: torch.Tensor, kv: torch.Tensor, dv: int, scale: float, causal: bool) -> torch.Tensor:
    """float64 one-KV-head attention for one sequence: q (S, H, D), kv (L, D) -> (S, H, dv)."""
    s, length = q.shape[0], kv.shape[0]
    scores = torch.einsum("shd,td->sht", q.double(), kv.double()) * scale
    if causal:
        visible = torch.arange(length)[None, :] <= (length - s + torch.arange(s))[:, None]  # bottom-right
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ kv[:, :dv].double()


def setup_step(backend: str, q_len: int = 2, dtype: torch.dtype = torch.bfloat16, shape: AttentionShape = DS_TINY,
               device: torch.device = CPU) -> tuple[AttentionVariant, Case, StepInputs]:
    module = build_variant("mla-absorbed", shape, device=device, dtype=dtype, seed=3)
    module.allocate_cache(BATCH, SEQ_LEN)
    gen = torch.Generator().manual_seed(4)
    module.fill_cache_random(SEQ_LEN - q_len, generator=gen)
    x = torch.randn(BATCH, q_len, shape.hidden_size, generator=gen).to(device, dtype)
    case = Case("test", shape.name, "mla-absorbed", backend, "decode", device.type, BATCH, SEQ_LEN, q_len,
                module.shape)
    return module, case, StepInputs(x, SEQ_LEN - q_len)


def check_step(module: AttentionVariant, fn: Any, inputs: StepInputs) -> None:
    ref = module.reference()(inputs.x.double(), inputs.start_pos)
    out = fn()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert ((out.double() - ref).norm() / ref.norm()).item() < 3e-2
    assert torch.equal(fn(), out)


# --- paged-cache helpers ---------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_pages_round_trip_the_contiguous_cache(shuffle: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    cache = torch.randn(3, 200, 8, generator=gen)  # (B_max, T_max, D)
    table = block_table_for(2, SEQ_LEN, 64, generator=gen if shuffle else None)
    assert table.shape == (2, 3) and table.dtype == torch.int32
    assert sorted(table.flatten().tolist()) == list(range(6))
    if not shuffle:
        assert table.tolist() == [[0, 1, 2], [3, 4, 5]]
    paged = to_pages(cache, SEQ_LEN, table, 64, fill=float("nan"))
    assert paged.pool.shape == (6, 64, 8) and paged.block_size == 64
    assert torch.equal(from_pages(paged), cache[:2, :SEQ_LEN])
    # Token p of sequence b lives at pool[table[b, p // 64], p % 64].
    assert torch.equal(paged.pool[table[1, 2], 1], cache[1, 129])
    # Slack past seq_len in each last page is poisoned, never data.
    assert torch.isnan(paged.pool[table[:, 2].long(), 2:]).all()


def test_write_rows_lands_in_the_right_slots() -> None:
    cache = torch.randn(2, 140, 8)
    paged = to_pages(cache, SEQ_LEN, block_table_for(2, SEQ_LEN, 64, generator=torch.Generator().manual_seed(1)))
    slots = slot_indices(paged.block_table, 126, SEQ_LEN, 64)  # a step crossing a page boundary
    assert slots.shape == (2, 4) and slots.dtype == torch.int64
    rows = torch.randn(2, 4, 8)
    write_rows(paged.pool, slots, rows)
    cache[:2, 126:SEQ_LEN] = rows
    assert torch.equal(from_pages(paged), cache[:2, :SEQ_LEN])


def test_pages_for_step_and_bad_tables() -> None:
    cache = torch.randn(2, SEQ_LEN, 8)
    paged, slots = pages_for_step(cache, 2, 128, SEQ_LEN)
    assert torch.equal(from_pages(paged), cache) and slots.tolist() == [[128, 129], [320, 321]]
    with pytest.raises(ValueError, match="pages of 64"):
        to_pages(cache, SEQ_LEN, block_table_for(2, 64))
    with pytest.raises(ValueError, match="distinct"):
        to_pages(cache, SEQ_LEN, torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="int32"):
        to_pages(cache, SEQ_LEN, block_table_for(2, SEQ_LEN).long())
    with pytest.raises(ValueError, match="do not fit"):
        slot_indices(block_table_for(2, SEQ_LEN), 190, 193)


# --- availability ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "module", "missing"), [
    ("flashmla", flashmla, "flash_mla is not installed (build it from source"),
    ("flashinfer", flashinfer, "flashinfer is not installed (pip install flashinfer-python)"),
])
def test_unavailable_here_with_a_clear_reason(monkeypatch: pytest.MonkeyPatch, name: str, module: Any,
                                              missing: str) -> None:
    spec = BACKENDS[name]
    assert spec.variants == ("mla-absorbed",) and spec.modes == ("decode",) and spec.fused
    if module._load_library()[0] is None:
        assert spec.unavailable(CPU).startswith(missing)
    # With the library importable, the device decides.
    monkeypatch.setattr(module, "_load_library", lambda: (SimpleNamespace(), None))
    reason = spec.unavailable(CPU)
    assert reason is not None and "cpu" in reason and ("SM90" in reason or "SM80" in reason)
    monkeypatch.setattr(module, "_load_library", lambda: (None, "flash_x failed to import: OSError: libcuda"))
    assert spec.unavailable(torch.device("cuda")) == "flash_x failed to import: OSError: libcuda"


@pytest.mark.parametrize("name", ["flashmla", "flashinfer"])
def test_only_deepseek_latent_in_16_bits(name: str) -> None:
    module, case, inputs = setup_step(name, dtype=torch.float32, shape=DS_TINY.replace(dtype="float32"))
    with pytest.raises(UnsupportedError, match="bf16 or fp16"):
        BACKENDS[name].prepare(module, case, inputs)
    tiny = from_name("tiny", dtype="bfloat16")
    module, case, inputs = setup_step(name, shape=tiny)
    with pytest.raises(UnsupportedError, match="kv_lora_rank 512 and rope_head_dim 64"):
        BACKENDS[name].prepare(module, case, inputs)


# --- plumbing through stand-ins ----------------------------------------------------------------


class FakeFlashMLA:
    """flash_mla's decode API computed in float64 from the page pool, checking what it is given."""

    __version__ = "stand-in"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get_mla_metadata(self, cache_seqlens: torch.Tensor, q_per_kv_head: int, kv_heads: int) -> tuple[str, str]:
        self.metadata_args = (cache_seqlens.clone(), q_per_kv_head, kv_heads)
        return "tile-metadata", "num-splits"

    def flash_mla_with_kvcache(self, q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                               cache_seqlens: torch.Tensor, head_dim_v: int, tile_scheduler_metadata: Any,
                               num_splits: Any, softmax_scale: float | None = None,
                               causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h, d = q.shape
        assert k_cache.dim() == 4 and k_cache.shape[1:] == (64, 1, d)  # (num_pages, 64, 1, D)
        assert block_table.dtype == torch.int32 and cache_seqlens.dtype == torch.int32
        assert (tile_scheduler_metadata, num_splits) == ("tile-metadata", "num-splits")
        assert softmax_scale is not None, "the default 576**-0.5 is wrong for DeepSeek"
        self.calls.append({"k_cache": k_cache, "block_table": block_table, "scale": softmax_scale,
                           "causal": causal, "head_dim_v": head_dim_v})
        out = torch.empty(b, s, h, head_dim_v, dtype=torch.float64)
        for i in range(b):
            n = int(cache_seqlens[i])
            kv = k_cache[block_table[i].long(), :, 0].flatten(0, 1)[:n]  # (n, D): pages in table order
            out[i] = attend(q[i], kv, head_dim_v, softmax_scale, causal)
        return out.to(q.dtype), torch.zeros(b, h, s)


def test_flashmla_plumbing_with_a_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeFlashMLA()
    monkeypatch.setattr(flashmla, "_load_library", lambda: (fake, None))
    module, case, inputs = setup_step("flashmla", q_len=2)
    prepared = BACKENDS["flashmla"].prepare(module, case, inputs)
    assert prepared.detail == "flashmla:stand-in,block=64" and prepared.compile_ms is not None
    seqlens, q_per_kv_head, kv_heads = fake.metadata_args
    assert seqlens.tolist() == [SEQ_LEN] * BATCH and (q_per_kv_head, kv_heads) == (2 * DS_TINY.num_heads, 1)
    check_step(module, prepared.fn, inputs)
    call = fake.calls[-1]
    assert call["scale"] == module.shape.mla_softmax_scale and call["causal"] is True
    assert call["head_dim_v"] == 512 and call["block_table"].shape == (BATCH, math.ceil(SEQ_LEN / 64))
    # The pool mirrors our cache, this step's new rows included.
    pool = call["k_cache"][:, :, 0]
    mirrored = from_pages(PagedCache(pool, call["block_table"], SEQ_LEN))
    assert torch.equal(mirrored, module.cache_tensors()["kv_cache"][:, :SEQ_LEN])
    assert all(c["k_cache"] is call["k_cache"] for c in fake.calls)  # the pool is built once


def test_flashmla_build_without_dense_decode_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeFlashMLA()

    def sparse_only(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Sparse attention is required: `indices` must be provided")

    fake.flash_mla_with_kvcache = sparse_only  # type: ignore[method-assign]
    monkeypatch.setattr(flashmla, "_load_library", lambda: (fake, None))
    module, case, inputs = setup_step("flashmla", q_len=1)
    with pytest.raises(UnsupportedError,
                       match="flash_mla cannot load or build its kernels here: AssertionError: Sparse attention"):
        BACKENDS["flashmla"].prepare(module, case, inputs)


class FakeWrapper:
    """flashinfer.mla.BatchMLAPagedAttentionWrapper computed in float64 from the plan and the page views."""

    instances: list[FakeWrapper] = []

    def __init__(self, workspace: torch.Tensor, backend: str = "auto") -> None:
        assert workspace.dtype == torch.uint8 and workspace.numel() >= 64 * 1024 * 1024
        self.backend = backend
        self.runs: list[dict[str, Any]] = []
        FakeWrapper.instances.append(self)

    def plan(self, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
             kv_len_arr: torch.Tensor, num_heads: int, head_dim_ckv: int, head_dim_kpe: int, page_size: int,
             causal: bool, sm_scale: float, q_data_type: torch.dtype, kv_data_type: torch.dtype) -> None:
        for t in (qo_indptr, kv_indptr, kv_indices, kv_len_arr):
            assert t.dtype == torch.int32
        self.plan_args = dict(qo_indptr=qo_indptr, kv_indptr=kv_indptr, kv_indices=kv_indices, kv_len=kv_len_arr,
                              num_heads=num_heads, ckv=head_dim_ckv, kpe=head_dim_kpe, page_size=page_size,
                              causal=causal, sm_scale=sm_scale, q_dtype=q_data_type, kv_dtype=kv_data_type)

    def run(self, q_nope: torch.Tensor, q_pe: torch.Tensor, ckv_cache: torch.Tensor,
            kpe_cache: torch.Tensor) -> torch.Tensor:
        p = self.plan_args
        assert q_nope.shape[1:] == (p["num_heads"], p["ckv"]) and q_pe.shape[1:] == (p["num_heads"], p["kpe"])
        assert ckv_cache.shape[1:] == (p["page_size"], p["ckv"]) and kpe_cache.shape[1:] == (p["page_size"], p["kpe"])
        self.runs.append({"ckv": ckv_cache, "kpe": kpe_cache})
        q = torch.cat((q_nope, q_pe), dim=-1)  # (N, H, D)
        kv = torch.cat((ckv_cache, kpe_cache), dim=-1)  # (pages, page_size, D)
        out = torch.empty(q.shape[0], p["num_heads"], p["ckv"], dtype=torch.float64)
        for b in range(len(p["kv_len"])):
            rows = slice(int(p["qo_indptr"][b]), int(p["qo_indptr"][b + 1]))
            pages = p["kv_indices"][int(p["kv_indptr"][b]):int(p["kv_indptr"][b + 1])].long()
            seq = kv[pages].flatten(0, 1)[: int(p["kv_len"][b])]  # (L, D)
            out[rows] = attend(q[rows], seq, p["ckv"], p["sm_scale"], p["causal"])
        return out.to(q_nope.dtype)


def test_flashinfer_plumbing_with_a_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(__version__="stand-in", mla=SimpleNamespace(BatchMLAPagedAttentionWrapper=FakeWrapper))
    monkeypatch.setattr(flashinfer, "_load_library", lambda: (fake, None))
    FakeWrapper.instances.clear()
    module, case, inputs = setup_step("flashinfer", q_len=2)
    prepared = BACKENDS["flashinfer"].prepare(module, case, inputs)
    assert prepared.detail == "flashinfer:stand-in,auto,page=64"
    check_step(module, prepared.fn, inputs)
    (wrapper,) = FakeWrapper.instances
    p = wrapper.plan_args
    assert p["qo_indptr"].tolist() == [0, 2, 4] and p["kv_indptr"].tolist() == [0, 3, 6]
    assert p["kv_len"].tolist() == [SEQ_LEN] * BATCH and p["causal"] is True
    assert p["sm_scale"] == module.shape.mla_softmax_scale and (p["ckv"], p["kpe"]) == (512, 64)
    assert p["q_dtype"] == p["kv_dtype"] == torch.bfloat16
    run = wrapper.runs[-1]
    # ckv / kpe are views of one pool, which mirrors our cache including this step's rows.
    assert run["ckv"].data_ptr() == run["kpe"].data_ptr() - 512 * run["kpe"].element_size()
    pool = torch.cat((run["ckv"], run["kpe"]), dim=-1)
    mirrored = from_pages(PagedCache(pool, p["kv_indices"].view(BATCH, -1), SEQ_LEN))
    assert torch.equal(mirrored, module.cache_tensors()["kv_cache"][:, :SEQ_LEN])


# --- the real libraries, where a GPU has them ----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["flashmla", "flashinfer", "triton", "sdpa"])
@pytest.mark.parametrize("q_len", [1, 2])
def test_paged_libraries_on_gpu_match_the_reference(name: str, q_len: int) -> None:
    cuda = torch.device("cuda")
    reason = BACKENDS[name].unavailable(cuda)
    if reason is not None:
        pytest.skip(reason)
    module, case, inputs = setup_step(name, q_len=q_len, device=cuda)
    prepared = BACKENDS[name].prepare(module, case, inputs)
    check_step(module, prepared.fn, inputs)
