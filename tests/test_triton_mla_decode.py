"""Tests for the fused Triton MLA decode kernel (mlabench.kernels.mla_decode).

Every case compares against a float64 reference on random inputs. Without CUDA the
kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
shapes are kept small: D = 64+16 or 32+16, a few heads, at most ~100 cache tokens. The
cache slack beyond each sequence's length is filled with NaN, so any out-of-range read
shows up as a non-finite output. Every launch configuration the launcher picks
(`auto_configs`) runs here with ragged split boundaries, S > 1 and batch > 1; the launch
module's checks and split heuristic are tested as pure functions. Whether those
configurations compile cleanly for sm_90a is tests/test_kernel_compile.py's job.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from mlabench.kernels import mla_decode as mla_mod  # noqa: E402
from mlabench.kernels.mla_decode import (  # noqa: E402
    HAS_TRITON,
    mla_decode,
    mla_decode_config,
    triton_unavailable_reason,
)
from mlabench.kernels.mla_decode_launch import (  # noqa: E402
    DEFAULT_NUM_SMS,
    MAX_SPLITS,
    MIN_BLOCKS_PER_SPLIT,
    LaunchConfig,
    auto_configs,
    choose_config,
    ctas_per_sm,
    default_num_splits,
    launch_value_error,
    max_splits_for,
    wave_efficiency,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_REASON = triton_unavailable_reason(DEVICE)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"mla_decode unavailable: {_REASON}")

# (atol, rtol, min cosine similarity) per dtype. fp32 uses IEEE dots, so it is tight;
# 16-bit tolerances cover the rounding of inputs, of P before the PV product, and of the output.
_TOL = {
    torch.float32: (1e-5, 1e-5, 1 - 1e-9),
    torch.float16: (3e-3, 3e-3, 1 - 1e-5),
    torch.bfloat16: (2.5e-2, 2.5e-2, 1 - 1e-4),
}


def reference(
    q: torch.Tensor, kv: torch.Tensor, seqlens: torch.Tensor, dv: int, scale: float
) -> torch.Tensor:
    """float64 absorbed-MLA attention with the bottom-right causal mask; (B, S, H, dv)."""
    B, S, H, _ = q.shape
    out = torch.empty(B, S, H, dv, dtype=torch.float64)
    for b in range(B):
        L = int(seqlens[b])
        k = kv[b, :L].double().cpu()  # (L, D); only valid positions, never the NaN slack
        qb = q[b].double().cpu()  # (S, H, D)
        scores = torch.einsum("shd,td->sht", qb, k) * scale  # (S, H, L)
        q_pos = L - S + torch.arange(S)  # absolute position of each new token
        visible = torch.arange(L)[None, :] <= q_pos[:, None]  # (S, L)
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        out[b] = torch.softmax(scores, dim=-1) @ k[:, :dv]
    return out


def assert_close_strict(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, min_cos: float, what: str = ""
) -> None:
    """FlashMLA-style check: same inf/nan positions, abs+rel tolerance, cosine similarity."""
    assert actual.shape == expected.shape, f"{what} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    for name, fn in (("nan", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        mismatch = fn(a) != fn(e)
        if mismatch.any():
            idx = tuple(mismatch.nonzero()[0].tolist())
            raise AssertionError(
                f"{what} {name} positions differ ({int(mismatch.sum())} elements); "
                f"first at {idx}: actual {a[idx].item()}, expected {e[idx].item()}"
            )
    finite = torch.isfinite(e)
    a_f, e_f = a[finite], e[finite]
    if e_f.numel() == 0:
        return
    err = (a_f - e_f).abs()
    bad = err > atol + rtol * e_f.abs()
    cos = torch.nn.functional.cosine_similarity(a_f.flatten(), e_f.flatten(), dim=0).item()
    if bad.any() or cos < min_cos:
        excess = err - (atol + rtol * e_f.abs())
        worst_flat = int(excess.argmax())
        worst = tuple(finite.nonzero()[worst_flat].tolist())
        raise AssertionError(
            f"{what} mismatch: {int(bad.sum())}/{e_f.numel()} elements out of tolerance "
            f"(atol={atol}, rtol={rtol}), max abs err {err.max().item():.3e}, cosine {cos:.12f} "
            f"(min {min_cos}); worst at {worst}: actual {a[worst].item():.8g}, expected {e[worst].item():.8g}"
        )


def make_inputs(
    lengths: list[int],
    S: int,
    H: int,
    dv: int,
    dr: int,
    dtype: torch.dtype = torch.float32,
    t_max: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (B, S, H, D), cache (B, T_max, D) with NaN slack, int32 seqlens (B,)."""
    g = torch.Generator().manual_seed(seed)
    B, D = len(lengths), dv + dr
    t_max = t_max if t_max is not None else max(lengths) + 5
    q = torch.randn(B, S, H, D, generator=g)
    kv = torch.randn(B, t_max, D, generator=g)
    for b, L in enumerate(lengths):
        kv[b, L:] = float("nan")  # slack poisoning: must never be read
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    return q.to(DEVICE, dtype), kv.to(DEVICE, dtype), seqlens.to(DEVICE)


def check(
    q: torch.Tensor, kv: torch.Tensor, seqlens: torch.Tensor, dv: int, scale: float, num_splits: int | None,
    **kw: int,
) -> torch.Tensor:
    out = mla_decode(q, kv, seqlens, dv, scale, num_splits, **kw)
    assert out.dtype == q.dtype and out.device == q.device
    assert out.shape == (*q.shape[:3], dv)
    assert torch.isfinite(out).all(), "non-finite output (a NaN slack position was read?)"
    atol, rtol, min_cos = _TOL[q.dtype]
    # The reference sees exactly the low-precision inputs the kernel saw.
    ref = reference(q, kv, seqlens, dv, scale)
    assert_close_strict(out, ref, atol, rtol, min_cos, what=f"{q.dtype} splits={num_splits}")
    return out


def test_comparator_catches_mismatches() -> None:
    # The strict comparator itself: NaN placement, tolerance and worst-element reporting.
    ref = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert_close_strict(ref.clone(), ref, 1e-6, 1e-6, 1 - 1e-9)
    with_nan = ref.clone()
    with_nan[1, 2] = float("nan")
    with pytest.raises(AssertionError, match="nan positions differ"):
        assert_close_strict(with_nan, ref, 1e-6, 1e-6, 1 - 1e-9)
    off = ref.clone()
    off[3, 4] += 1e-3
    with pytest.raises(AssertionError, match=r"worst at \(3, 4\)"):
        assert_close_strict(off, ref, 1e-6, 1e-6, 1 - 1e-9)


@pytest.mark.parametrize("S", [1, 2, 3])
@pytest.mark.parametrize("H", [1, 3, 4])
def test_fp32_q_len_and_heads(S: int, H: int) -> None:
    # Odd, different lengths in one batch, including one equal to S (only the new tokens).
    lengths = [S, 17, 33]
    q, kv, seqlens = make_inputs(lengths, S, H, dv=64, dr=16, seed=S * 10 + H)
    check(q, kv, seqlens, 64, 0.1, num_splits=3)


@pytest.mark.parametrize("num_splits", [None, 1, 2, 5, 16])
def test_fp32_num_splits(num_splits: int | None) -> None:
    # 16 splits over <= 4 KV blocks of 32: most splits are empty and must be ignored by the merge;
    # with S = 3 some rows also see nothing inside a non-empty split (causal edge).
    q, kv, seqlens = make_inputs([1 + 2, 17, 33, 100], S=3, H=4, dv=32, dr=16, t_max=111, seed=1)
    check(q, kv, seqlens, 32, 32**-0.5, num_splits)


def test_fp32_single_split_equals_many() -> None:
    # The direct-store path (one split) and the split+combine path agree to fp32 rounding.
    q, kv, seqlens = make_inputs([9, 64, 97], S=2, H=3, dv=64, dr=16, t_max=100, seed=2)
    one = mla_decode(q, kv, seqlens, 64, 0.125, num_splits=1)
    many = mla_decode(q, kv, seqlens, 64, 0.125, num_splits=4)
    assert_close_strict(many, one, 1e-6, 1e-5, 1 - 1e-10, what="1 vs 4 splits")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_half_precision(dtype: torch.dtype, num_splits: int) -> None:
    q, kv, seqlens = make_inputs([2, 17, 33], S=2, H=3, dv=64, dr=16, dtype=dtype, seed=3)
    check(q, kv, seqlens, 64, 80**-0.5, num_splits)


def test_noncontiguous_views() -> None:
    # Cache as a prefix view of a larger [B, T_big, 1, D] buffer (FlashMLA's layout with the
    # KV-head dim squeezed), and q as a transposed [B, H, S, D] tensor.
    B, S, H, dv, dr, T, T_big = 3, 2, 3, 32, 16, 40, 64
    lengths = [5, 23, 40]
    g = torch.Generator().manual_seed(4)
    buf = torch.randn(B, T_big, 1, dv + dr, generator=g)
    for b, L in enumerate(lengths):
        buf[b, L:] = float("nan")
    kv = buf[:, :T, 0]  # (B, T, D), stride (T_big*D, D, 1)
    assert not kv.is_contiguous()
    q = torch.randn(B, H, S, dv + dr, generator=g).transpose(1, 2)  # (B, S, H, D), non-contiguous
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    check(q.to(DEVICE), kv.to(DEVICE), seqlens.to(DEVICE), dv, 0.15, num_splits=2)

    # A cache whose rows are padded (stride along T larger than D).
    wide = torch.randn(B, T, dv + dr + 8, generator=g)
    for b, L in enumerate(lengths):
        wide[b, L:] = float("nan")
    check(q.to(DEVICE), wide[..., : dv + dr].to(DEVICE), seqlens.to(DEVICE), dv, 0.15, num_splits=3)


def test_large_logits_stable() -> None:
    # Scores in the hundreds: the online softmax must rescale, not overflow.
    q, kv, seqlens = make_inputs([7, 50], S=2, H=4, dv=32, dr=16, seed=5)
    check(q * 4, kv, seqlens, 32, 1.0, num_splits=3)


def test_block_size_knobs() -> None:
    # Row blocks that split one sequence's S*H rows (block_h 16 < 3*7 rows) and a wider KV tile.
    q, kv, seqlens = make_inputs([3, 30, 61], S=3, H=7, dv=32, dr=16, seed=6)
    check(q, kv, seqlens, 32, 0.2, num_splits=2, block_h=16, block_n=16)
    check(q, kv, seqlens, 32, 0.2, num_splits=2, block_h=32, block_n=64)


def test_deepseek_dims() -> None:
    # The real DeepSeek layout: D = 512 + 64 (no padding), H = 16, bf16, short cache.
    q, kv, seqlens = make_inputs([1, 24], S=1, H=16, dv=512, dr=64, dtype=torch.bfloat16, seed=7)
    check(q, kv, seqlens, 512, 0.135234, num_splits=2)


def test_empty_batch() -> None:
    q, kv, seqlens = make_inputs([4], S=1, H=2, dv=32, dr=16)
    out = mla_decode(q[:0], kv[:0], seqlens[:0], 32, 0.1)
    assert out.shape == (0, 1, 2, 32)


def _auto_config_cases() -> list:
    """(config, dtype, S, H) for every config the launcher picks, with a shape it picks it for."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    cases = []
    for cfg, names in auto_configs().items():
        # S = 3 new tokens (causal limits differ per row); 4 heads -> 12 rows (one 16-row block),
        # 7 heads -> 21 rows (one 32-row block with 11 padding rows).
        heads = 4 if cfg.block_h == 16 else 7
        short = f"h{cfg.block_h}n{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}"
        cases += [pytest.param(cfg, dtypes[n], 3, heads, id=f"{short}-{n}") for n in names]
    return cases


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize(("cfg", "dtype", "S", "H"), _auto_config_cases())
def test_every_auto_config(cfg: LaunchConfig, dtype: torch.dtype, S: int, H: int, num_splits: int) -> None:
    # The launcher really picks this config for the shape, and it is exact against float64 with:
    # a batch of 3, lengths that are multiples of neither block_n nor the split chunk (75 in 3
    # splits of 32-token chunks: 32 + 32 + 11), one sequence holding only the S new tokens, and
    # NaN slack after every sequence.
    q, kv, seqlens = make_inputs([S, 37, 75], S=S, H=H, dv=64, dr=16, dtype=dtype, t_max=83, seed=cfg.block_h)
    auto = mla_decode_config(q, kv, num_splits)
    assert (auto.block_h, auto.block_n, auto.num_warps, auto.num_stages) == (
        cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages)
    check(q, kv, seqlens, 64, 80**-0.5, num_splits, block_h=cfg.block_h, block_n=cfg.block_n,
          num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def test_auto_config_at_deepseek_dims() -> None:
    # D = 512 + 64, 16 heads x 2 tokens = 32 rows -> the 32-row config; default split count.
    q, kv, seqlens = make_inputs([2, 45], S=2, H=16, dv=512, dr=64, dtype=torch.bfloat16, seed=8)
    cfg = mla_decode_config(q, kv)
    assert (cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages) == (32, 32, 8, 3)
    check(q, kv, seqlens, 512, 576**-0.5, None)


def test_explicit_64_row_blocks() -> None:
    # The wgmma-sized row block is never picked automatically (it spills on sm_90) but stays an
    # option: 2 tokens x 40 heads = 80 rows -> two row blocks, the second mostly padding.
    q, kv, seqlens = make_inputs([2, 19, 50], S=2, H=40, dv=32, dr=16, seed=9)
    check(q, kv, seqlens, 32, 0.2, num_splits=2, block_h=64, block_n=16, num_warps=8, num_stages=2)


def test_launch_config_detail_names_all_five_values() -> None:
    cfg = LaunchConfig(block_h=32, block_n=32, num_warps=8, num_stages=3, num_splits=7)
    assert cfg.detail == "block_h=32,block_n=32,num_warps=8,num_stages=3,num_splits=7"


def test_default_configs() -> None:
    # 16-bit: 16-row blocks up to 16 rows, 32 above (64 spills on sm_90); fp32: 16 x 16 tiles.
    assert choose_config(1, 16, 4096, elem_bytes=2) == LaunchConfig(16, 32, 4, 3, choose_config(1, 16, 4096).num_splits)
    big = choose_config(8, 128, 4096, elem_bytes=2)
    assert (big.block_h, big.block_n, big.num_warps, big.num_stages) == (32, 32, 8, 3)
    fp32 = choose_config(8, 128, 4096, elem_bytes=4)
    assert (fp32.block_h, fp32.block_n, fp32.num_warps, fp32.num_stages) == (16, 16, 4, 3)
    # Explicit knobs win; the split count follows the row blocks they imply.
    cfg = choose_config(1, 128, 32768, block_h=64, num_warps=8, num_splits=None)
    assert (cfg.block_h, cfg.num_warps) == (64, 8)
    assert cfg.num_splits == default_num_splits(1, 2, 32768, 32, DEFAULT_NUM_SMS, ctas_per_sm(8))
    with pytest.raises(ValueError, match=r"^block_n must be a power of two in \[16, 256\], got 48$"):
        choose_config(1, 16, 64, block_n=48)
    with pytest.raises(TypeError, match="'block_m' is not a launch knob"):  # a misspelt knob is not ignored
        choose_config(1, 16, 64, block_m=32)


@pytest.mark.parametrize(("name", "value"), [
    ("block_h", 8), ("block_h", 48), ("block_h", 256), ("block_h", True), ("block_n", 512), ("block_n", 16.0),
    ("num_warps", 0), ("num_warps", 6), ("num_warps", 32), ("num_stages", 0), ("num_stages", 9),
    ("num_splits", 0), ("num_splits", 5000), ("num_splits", "4"),
])
def test_launch_value_errors(name: str, value: object) -> None:
    err = launch_value_error(name, value)
    assert err is not None and err.startswith("must be ") and err.endswith(f"got {value!r}")
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        choose_config(1, 16, 64, **{name: value})


@pytest.mark.parametrize(("name", "value"), [("block_h", 16), ("block_h", 128), ("block_n", 256),
                                             ("num_warps", 1), ("num_stages", 1), ("num_splits", 4096)])
def test_launch_values_accepted(name: str, value: int) -> None:
    assert launch_value_error(name, value) is None
    assert launch_value_error(name, None) is None  # None = default


def _best_efficiency(base: int, slots: int, s_max: int) -> float:
    return max(base * s / (math.ceil(base * s / slots) * slots) for s in range(1, s_max + 1))


def test_split_heuristic_examples() -> None:
    # H100/H200 (132 SMs), two 4-warp CTAs per SM: a wave is 264 CTAs.
    # One sequence, one row block, long cache: as many splits as reach 85% of the best wave use.
    assert default_num_splits(1, 1, 32768, 32, 132, 2) == 109
    # 4 sequences x 8 row blocks = 32 CTAs: 8 splits -> 256 of 264 slots in one wave.
    assert default_num_splits(4, 8, 32768, 32, 132, 2) == 8
    # 64 x 8 = 512 CTAs already fill ~2 waves: no split, no combine pass.
    assert default_num_splits(64, 8, 32768, 32, 132, 2) == 1
    # Short caches: each split keeps >= 4 blocks of 32 tokens.
    assert default_num_splits(1, 1, 256, 32, 132, 2) == 2
    assert default_num_splits(1, 1, 100, 32, 132, 2) == 1
    # One 8-warp CTA per SM: half the slots, so fewer splits for the same grid.
    assert default_num_splits(4, 4, 32768, 32, 132, 1) == 8
    assert ctas_per_sm(4) == 2 and ctas_per_sm(8) == 1 and ctas_per_sm(16) == 1


@pytest.mark.parametrize("num_sms", [1, 8, 78, 132])
@pytest.mark.parametrize("ctas", [1, 2])
def test_split_heuristic_whole_waves_and_bounds(num_sms: int, ctas: int) -> None:
    slots = num_sms * ctas
    for batch in (1, 2, 3, 5, 16, 64, 300):
        for row_blocks in (1, 2, 4, 8):
            prev = 0
            for t_max in (1, 64, 127, 128, 1000, 4096, 32768, 131072):
                s = default_num_splits(batch, row_blocks, t_max, 32, num_sms, ctas)
                s_max = max_splits_for(t_max, 32)
                base = batch * row_blocks
                assert 1 <= s <= min(s_max, MAX_SPLITS)
                # Every non-empty split keeps its minimum number of KV blocks of a full cache.
                assert s == 1 or t_max // s >= MIN_BLOCKS_PER_SPLIT * 32
                if base >= 0.8 * slots:
                    assert s == 1, (batch, row_blocks, t_max)
                else:
                    # Whole waves: within 85% of the best CTA-slot use any allowed count reaches.
                    assert wave_efficiency(base * s, slots) >= 0.85 * _best_efficiency(base, slots, s_max) - 1e-12
                # Longer caches never get fewer splits.
                assert s >= prev, (batch, row_blocks, t_max)
                prev = s


def test_split_heuristic_fills_a_wave_when_the_cache_allows() -> None:
    # Whenever some split count fills a wave exactly, the choice uses at least 85% of one.
    for batch in range(1, 40):
        s = default_num_splits(batch, 1, 1 << 20, 32, 132, 2)
        if batch >= 0.8 * 264:
            continue
        assert batch * s >= 0.85 * 264 or _best_efficiency(batch, 264, MAX_SPLITS) < 1.0, batch


def test_unavailable_reason() -> None:
    assert HAS_TRITON
    assert triton_unavailable_reason(DEVICE) is None
    assert "unsupported" in (triton_unavailable_reason(torch.device("meta")) or "")


def test_import_without_triton() -> None:
    # The module must import where triton is absent and then refuse to run with the reason.
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import torch\n"
        "from mlabench.kernels import mla_decode as m\n"
        "assert m.HAS_TRITON is False\n"
        "assert m.triton_unavailable_reason(torch.device('cpu')) == 'triton is not installed'\n"
        "try:\n"
        "    m.mla_decode(torch.zeros(1, 1, 1, 8), torch.zeros(1, 4, 8),"
        " torch.ones(1, dtype=torch.int32), 4, 0.5)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no RuntimeError')\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo_root
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="compiled kernels run on this machine")
def test_cpu_without_interpreter_reports_reason() -> None:
    # Imported without TRITON_INTERPRET, the kernels are compiled-only: CPU tensors are refused.
    code = (
        "import torch\n"
        "from mlabench.kernels import mla_decode as m\n"
        "r = m.triton_unavailable_reason(torch.device('cpu'))\n"
        "assert r is not None and 'TRITON_INTERPRET' in r, r\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[1], env=env,
    )
    assert proc.returncode == 0, proc.stderr


def _good() -> dict:
    q, kv, seqlens = make_inputs([3, 9], S=2, H=2, dv=32, dr=16, t_max=12)
    return {"q": q, "kv_cache": kv, "cache_seqlens": seqlens, "head_dim_v": 32, "softmax_scale": 0.1}


_BAD_CASES = {
    "q_rank": ("q", lambda a: a["q"][0]),
    "q_dtype": ("q", lambda a: a["q"].double()),
    "kv_rank": ("kv_cache", lambda a: a["kv_cache"][:, :, None]),
    "kv_dtype": ("kv_cache", lambda a: a["kv_cache"].half()),
    "kv_batch": ("kv_cache", lambda a: a["kv_cache"][:1]),
    "kv_dim": ("kv_cache", lambda a: a["kv_cache"][..., :40]),
    "kv_last_stride": ("kv_cache", lambda a: a["kv_cache"].transpose(1, 2).contiguous().transpose(1, 2)),
    "kv_device": ("kv_cache", lambda a: a["kv_cache"].to("meta")),
    "seqlens_dtype": ("cache_seqlens", lambda a: a["cache_seqlens"].long()),
    "seqlens_rank": ("cache_seqlens", lambda a: a["cache_seqlens"][None]),
    "seqlens_batch": ("cache_seqlens", lambda a: a["cache_seqlens"][:1]),
    "seqlens_below_S": ("cache_seqlens", lambda a: torch.tensor([1, 9], dtype=torch.int32)),
    "seqlens_above_T": ("cache_seqlens", lambda a: torch.tensor([3, 13], dtype=torch.int32)),
    "dv_too_big": ("head_dim_v", lambda a: 48),
    "dv_zero": ("head_dim_v", lambda a: 0),
    "dv_float": ("head_dim_v", lambda a: 32.0),
    "scale_nan": ("softmax_scale", lambda a: math.nan),
    "scale_negative": ("softmax_scale", lambda a: -0.1),
    "splits_zero": ("num_splits", lambda a: 0),
    "block_h_not_pow2": ("block_h", lambda a: 24),
    "block_n_small": ("block_n", lambda a: 8),
    "warps_bad": ("num_warps", lambda a: 3),
    "stages_zero": ("num_stages", lambda a: 0),
}


@pytest.mark.parametrize("case", list(_BAD_CASES))
def test_input_validation(case: str) -> None:
    arg, make_bad = _BAD_CASES[case]
    args = _good()
    if case in ("seqlens_below_S", "seqlens_above_T") and DEVICE.type != "cpu":
        pytest.skip("value checks on seqlens are skipped on CUDA to avoid a device sync")
    bad = make_bad(args)
    args[arg] = bad
    # The message starts with the offending argument's name.
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        mla_decode(**args)


def test_interpreter_flag_matches_environment() -> None:
    # Documents which path ran: compiled kernels on CUDA, the interpreter otherwise.
    if DEVICE.type == "cpu":
        assert mla_mod.INTERPRETED


@pytest.mark.parametrize("page_size", [4, 16])
def test_paged_ragged_cache_through_a_block_table(page_size: int) -> None:
    # The same ragged batch as a shuffled page pool: pages of other sequences, unused slots and
    # one page no sequence owns are NaN-poisoned, so any read outside a sequence's pages shows.
    from mlabench.variants.cache_map import CacheMap

    lengths = [2, 40, 17]
    q, kv, seqlens = make_inputs(lengths, S=2, H=2, dv=32, dr=16, seed=6)
    cmap = CacheMap(len(lengths), max(lengths), DEVICE, tuple(lengths), page_size, shuffle_seed=2)
    pool = torch.full((cmap.num_pages + 1, page_size, 48), float("nan"), dtype=kv.dtype, device=DEVICE)
    for b, n in enumerate(lengths):
        pos = torch.arange(n, device=DEVICE)[None, :]
        pool.view(-1, 48)[cmap._slots(pos, torch.tensor([b], device=DEVICE))[0]] = kv[b, :n]
    assert torch.isnan(pool).any()  # the poison is there
    for splits in (1, 3):
        out = mla_decode(q, pool, seqlens, 32, 0.15, splits, block_table=cmap.block_table)
        assert torch.isfinite(out).all(), "a NaN-poisoned slot was read"
        atol, rtol, min_cos = _TOL[q.dtype]
        assert_close_strict(out, reference(q, kv, seqlens, 32, 0.15), atol, rtol, min_cos, what=f"paged {page_size}")
