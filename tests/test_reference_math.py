"""Float64 references written from docs/variants.md, independent of the modules they check.

Each reference below is the math of docs/variants.md in plain torch float64 (its own
matmuls, its own RoPE) on the module's weights, read by parameter name, and
fresh random inputs; only the module's output is compared, at 1e-10.

- YaRN frequencies: DeepSeek-V3's `precompute_freqs_cis` (inference/model.py:
  find_correction_dim, find_correction_range, linear_ramp_factor) in Python
  floats, against `rope.inv_frequencies`, the tables the modules use and the
  preset values of docs/variants.md §8. DeepSeek's own inference code switches the
  correction (and its mscale^2) on its max_seq_len; docs/variants.md §8 and HF transformers
  apply both at every length, so the reference applies the correction always.
- `lowrank-kv` and `linformer`: docs/variants.md §4 (and each module's documented
  weight layout), prefill and, for lowrank-kv, decode steps.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from mlabench.config import AttentionShape, from_name
from mlabench.variants import build_variant
from mlabench.variants.rope import inv_frequencies, rope_table

F64 = torch.float64
DEEPSEEK = ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _x(batch: int, tokens: int, hidden: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, tokens, hidden, dtype=F64, generator=torch.Generator().manual_seed(seed))


# --- YaRN ---------------------------------------------------------------------------------------------
def deepseek_yarn_freqs(dim: int, base: float, factor: float, original_seq_len: int,
                        beta_fast: float, beta_slow: float) -> list[float]:
    """DeepSeek-V3 inference/model.py `precompute_freqs_cis`, frequency part, in Python floats."""

    def find_correction_dim(num_rotations: float, dim: int, base: float, max_seq_len: int) -> float:
        return dim * math.log(max_seq_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    def find_correction_range(low_rot: float, high_rot: float, dim: int, base: float, max_seq_len: int
                              ) -> tuple[float, float]:
        low = math.floor(find_correction_dim(low_rot, dim, base, max_seq_len))
        high = math.ceil(find_correction_dim(high_rot, dim, base, max_seq_len))
        return max(low, 0), min(high, dim - 1)

    def linear_ramp_factor(lo: float, hi: float, n: int) -> list[float]:
        if lo == hi:
            hi += 0.001
        return [min(max((i - lo) / (hi - lo), 0.0), 1.0) for i in range(n)]

    freqs = [1.0 / base ** (i / dim) for i in range(0, dim, 2)]
    if factor <= 1.0:
        return freqs
    low, high = find_correction_range(beta_fast, beta_slow, dim, base, original_seq_len)
    smooth = [1 - r for r in linear_ramp_factor(low, high, dim // 2)]
    return [f / factor * (1 - s) + f * s for f, s in zip(freqs, smooth, strict=True)]


def _reference_freqs(shape: AttentionShape, dim: int) -> torch.Tensor:
    return torch.tensor(deepseek_yarn_freqs(dim, shape.rope_theta, shape.rope_scaling_factor,
                                            shape.rope_original_max_position, shape.rope_beta_fast,
                                            shape.rope_beta_slow), dtype=F64)


SMALL_YARN = AttentionShape(hidden_size=48, num_heads=4, head_dim=12, rope_head_dim=8, v_head_dim=10,
                            q_lora_rank=24, kv_lora_rank=20, rope_scaling_factor=40.0, rope_mscale_all_dim=1.0,
                            rope_original_max_position=64, dtype="float64")


@pytest.mark.parametrize("name", [*DEEPSEEK, "small-yarn"])
def test_yarn_frequencies_match_deepseek_formula(name: str) -> None:
    shape = SMALL_YARN if name == "small-yarn" else from_name(name)
    ref = _reference_freqs(shape, shape.rope_head_dim)
    got = inv_frequencies(shape.rope_head_dim, shape)
    # Frequencies span seven decades: compare element by element.
    assert ((got - ref).abs() / ref).max().item() < 1e-12
    # And YaRN really changed them: the slowest frequencies are divided by the factor.
    plain = 1.0 / shape.rope_theta ** (torch.arange(0, shape.rope_head_dim, 2, dtype=F64) / shape.rope_head_dim)
    assert got[-1].item() == pytest.approx(plain[-1].item() / shape.rope_scaling_factor, rel=1e-12)


def test_yarn_deepseek_v3_known_values() -> None:
    """d_r 64, theta 1e4, original length 4096, beta 32/1: the ramp runs over pairs 10..23."""
    shape = from_name("deepseek-v3")
    freqs = inv_frequencies(64, shape)
    plain = [10000.0 ** (-2 * i / 64) for i in range(32)]
    for i in range(11):  # extrapolated: unchanged
        assert freqs[i].item() == pytest.approx(plain[i], rel=1e-13)
    for i in range(23, 32):  # interpolated: divided by the factor 40
        assert freqs[i].item() == pytest.approx(plain[i] / 40, rel=1e-13)
    # Pair 16: ramp 6/13, so 1e4^-0.5 * (7/13 + 6/13/40) = 0.01 * 0.55.
    assert freqs[16].item() == pytest.approx(0.0055, rel=1e-13)


@pytest.mark.parametrize("name, tau", [("deepseek-v3", 0.135234), ("deepseek-v2", 0.114721),
                                       ("deepseek-v2-lite", 0.114721)])
def test_yarn_softmax_scale_matches_deepseek_formula(name: str, tau: float) -> None:
    shape = from_name(name)
    mscale = 0.1 * shape.rope_mscale_all_dim * math.log(shape.rope_scaling_factor) + 1.0  # DeepSeek's MLA.__init__
    expected = (128 + 64) ** -0.5 * mscale * mscale
    assert shape.mla_softmax_scale == pytest.approx(expected, rel=1e-15)
    assert shape.mla_softmax_scale == pytest.approx(tau, abs=1e-6)


@pytest.mark.parametrize("name", DEEPSEEK)
def test_yarn_rope_table_does_not_depend_on_cache_length(name: str) -> None:
    """A YaRN preset is one function at every length: a 1024-slot and an 8192-slot table
    (either side of the original 4096) agree on the shared positions, and both are YaRN's."""
    shape = from_name(name)
    dim = shape.rope_head_dim
    short, long = rope_table(dim, shape, 1024, torch.device("cpu")), rope_table(dim, shape, 8192, torch.device("cpu"))
    for a, b in zip(short, long, strict=True):
        assert torch.equal(a, b[:1024])
    angles = torch.arange(8192, dtype=F64)[:, None] * _reference_freqs(shape, dim)
    assert rel_err(long[0], angles.cos()) < 1e-12 and rel_err(long[1], angles.sin()) < 1e-12


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """DeepSeek's interleaved RoPE: pair (x[2i], x[2i+1]) times e^(i*angle[pos, i]); x (B, S, ..., d_r)."""
    angles = angles.view(1, angles.shape[0], *([1] * (x.dim() - 3)), angles.shape[1])
    re, im = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = re * angles.cos() - im * angles.sin()
    out[..., 1::2] = re * angles.sin() + im * angles.cos()
    return out


def _causal(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of (B, H, S, S) scores, query s seeing keys <= s."""
    s = scores.shape[-1]
    allowed = torch.arange(s)[None, :] <= torch.arange(s)[:, None]
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def _mla_reference(sh: AttentionShape, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """docs/variants.md §3, expanded form, with YaRN frequencies and tau = d_qk^-0.5 * mscale^2."""
    b, s, _ = x.shape
    h, d_n, d_r, d_c = sh.num_heads, sh.head_dim, sh.rope_head_dim, sh.kv_lora_rank
    angles = torch.arange(s, dtype=F64)[:, None] * _reference_freqs(sh, d_r)
    c_q = _rms(x @ w["q_a_proj.weight"].T, w["q_a_layernorm.weight"], sh.rms_norm_eps)
    q = (c_q @ w["q_b_proj.weight"].T).view(b, s, h, d_n + d_r)
    q = torch.cat((q[..., :d_n], _rope_pairs(q[..., d_n:], angles)), -1)
    kv = x @ w["kv_a_proj_with_mqa.weight"].T
    c_kv = _rms(kv[..., :d_c], w["kv_a_layernorm.weight"], sh.rms_norm_eps)
    k_pe = _rope_pairs(kv[..., d_c:], angles)  # (B, S, d_r): one key for all heads
    kvb = (c_kv @ w["kv_b_proj.weight"].T).view(b, s, h, d_n + sh.value_dim)
    k = torch.cat((kvb[..., :d_n], k_pe[:, :, None].expand(-1, -1, h, -1)), -1)
    mscale = 0.1 * sh.rope_mscale_all_dim * math.log(sh.rope_scaling_factor) + 1.0
    scores = torch.einsum("bshd,bthd->bhst", q, k) * (d_n + d_r) ** -0.5 * mscale**2
    o = torch.einsum("bhst,bthd->bshd", _causal(scores), kvb[..., d_n:])
    return o.reshape(b, s, -1) @ w["o_proj.weight"].T


@pytest.mark.parametrize("variant", ["mla-expanded", "mla-latent", "mla-absorbed"])
def test_yarn_mla_is_one_function_at_every_cache_length(variant: str) -> None:
    """A cache inside the original length (16 <= 64) and one past it (128) give the same
    output, and both are the YaRN reference (corrected frequencies and mscale^2 together)."""
    m = build_variant(variant, SMALL_YARN, dtype=F64, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in m.parameters():  # norm weights too: all-ones would hide a missing norm weight
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / (p.shape[-1] ** 0.5 if p.dim() > 1 else 1))
    w = dict(m.state_dict())
    x = _x(2, 12, SMALL_YARN.hidden_size, seed=5)
    ref = _mla_reference(SMALL_YARN, w, x)
    for slots in (16, 128):
        m.allocate_cache(2, slots)
        assert rel_err(m(x, 0), ref) < 1e-10, f"{slots} cache slots"


# --- lowrank-kv ---------------------------------------------------------------------------------------
def _rope_half(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE at positions 0..S-1: pair (x[i], x[i + D/2]) rotated by pos * theta^(-2i/D)."""
    s, d = x.shape[1], x.shape[-1]
    half = d // 2
    ang = torch.arange(s, dtype=F64)[:, None] * theta ** (-2 * torch.arange(half, dtype=F64) / d)  # (S, D/2)
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)


LOWRANK = AttentionShape(hidden_size=40, num_heads=4, head_dim=12, kv_lora_rank=5, rope_theta=50.0, dtype="float64")


def _lowrank_reference(sh: AttentionShape, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """docs/variants.md §4: per-head K/V latents of width r, up-projected per head to D, RoPE on the
    up-projected keys at their positions, causal attention with scale D^-0.5."""
    b, s, _ = x.shape
    h, d, r = sh.num_heads, sh.head_dim, sh.kv_lora_rank
    q = _rope_half((x @ w["q_proj.weight"].T).view(b, s, h, d), sh.rope_theta)
    c_k = (x @ w["k_proj.weight"].T).view(b, s, h, r)
    c_v = (x @ w["v_proj.weight"].T).view(b, s, h, r)
    # Per head: K_h = C_k,h @ k_up_proj[h]^T with k_up_proj[h] of shape (D, r).
    k = torch.stack([c_k[:, :, i] @ w["k_up_proj"][i].T for i in range(h)], dim=2)  # (B, S, H, D)
    v = torch.stack([c_v[:, :, i] @ w["v_up_proj"][i].T for i in range(h)], dim=2)
    k = _rope_half(k, sh.rope_theta)
    scores = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) / math.sqrt(d)  # (B, H, S, S)
    o = (_causal(scores) @ v.transpose(1, 2)).transpose(1, 2)  # (B, S, H, D)
    return o.reshape(b, s, h * d) @ w["o_proj.weight"].T


def test_lowrank_kv_matches_the_math() -> None:
    """Prefill, then a 1-token and a 2-token decode step from the latent cache, against the
    reference over the whole sequence (causal, so step outputs are its last rows)."""
    m = build_variant("lowrank-kv", LOWRANK, dtype=F64, seed=6)
    w = dict(m.state_dict())
    assert set(w) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "k_up_proj", "v_up_proj", "o_proj.weight"}
    x = _x(2, 10, LOWRANK.hidden_size, seed=7)
    ref = _lowrank_reference(LOWRANK, w, x)
    m.allocate_cache(2, 12)
    bounds = [0, 7, 8, 10]
    for start, stop in pairwise(bounds):
        assert rel_err(m(x[:, start:stop], start), ref[:, start:stop]) < 1e-10, f"tokens [{start}, {stop})"
    # The cache really is the latent width r, not D.
    assert m.cache_tensors()["k_cache"].shape[-1] == LOWRANK.kv_lora_rank


# --- linformer ----------------------------------------------------------------------------------------
LINFORMER = AttentionShape(hidden_size=40, num_heads=4, head_dim=10, kv_lora_rank=6, dtype="float64")


def _linformer_reference(sh: AttentionShape, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """docs/variants.md §4: per head, K and V projected along the sequence axis by the learned
    [k, n] matrices (shared by the heads), bidirectional attention over the k projected rows."""
    b, n, _ = x.shape
    h, d = sh.num_heads, sh.head_dim
    q = (x @ w["q_proj.weight"].T).view(b, n, h, d).transpose(1, 2)  # (B, H, n, D)
    k = (x @ w["k_proj.weight"].T).view(b, n, h, d).transpose(1, 2)
    v = (x @ w["v_proj.weight"].T).view(b, n, h, d).transpose(1, 2)
    k_proj = w["k_seq_proj"] @ k  # (k, n) @ (B, H, n, D) -> (B, H, k, D)
    v_proj = w["v_seq_proj"] @ v
    probs = (q @ k_proj.transpose(-1, -2) / math.sqrt(d)).softmax(-1)  # (B, H, n, k): no mask
    return (probs @ v_proj).transpose(1, 2).reshape(b, n, h * d) @ w["o_proj.weight"].T


@pytest.mark.parametrize("tokens", [16, 11])
def test_linformer_matches_the_math(tokens: int) -> None:
    """The sequence projections are sized for n = 16 cache slots. A shorter prefill uses their
    first columns, which is the full projection of the sequence zero-padded to n: a zero token
    has zero K and V rows (no biases). The reference takes that padded form."""
    n = 16
    m = build_variant("linformer", LINFORMER, dtype=F64, seed=8)
    m.allocate_cache(2, n)
    w = dict(m.state_dict())
    x = _x(2, tokens, LINFORMER.hidden_size, seed=9)
    padded = torch.cat((x, x.new_zeros(2, n - tokens, LINFORMER.hidden_size)), dim=1)
    # Only keys and values see the padding; the outputs kept are those of the real tokens.
    ref = _linformer_reference(LINFORMER, w, padded)[:, :tokens]
    assert rel_err(m(x, 0), ref) < 1e-10
