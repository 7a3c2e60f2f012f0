"""Tensor Product Attention and DeepSeek Sparse Attention in float64 against references written
from the official code's math (tensorgi/T6 `model/T6.py`; DeepSeek-V3.2-Exp `inference/model.py`),
their identities, their cost model and the preset figures of docs/variants.md §9."""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from mlabench import analytic
from mlabench.config import AttentionShape, ShapeError, from_name
from mlabench.step import decode_step, prefill_step
from mlabench.variants import build_variant, variant_class
from mlabench.variants.dsa import hadamard, selected_pairs
from mlabench.variants.kvquant import LatentFP8
from mlabench.variants.rope import inv_frequencies
from tests.cli_run import run_cli

F64 = torch.float64
TPA_SHAPE = AttentionShape(hidden_size=48, num_heads=5, head_dim=8, q_rank=3, k_rank=2, v_rank=3, dtype="float64")
# The indexer needs a query latent (q_lora_rank); 32 indexer heads make exact-zero index scores
# (every ReLU zero) rare, so top-k has no tie at the k-th place on these inputs (checked below).
DSA_SHAPE = AttentionShape(hidden_size=64, num_heads=4, head_dim=8, rope_head_dim=8, v_head_dim=6, q_lora_rank=24,
                           kv_lora_rank=12, index_heads=32, index_head_dim=16, topk=6, dtype="float64",
                           rope_scaling_factor=4.0, rope_mscale_all_dim=1.0, rope_original_max_position=8)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _x(batch: int, tokens: int, hidden: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, tokens, hidden, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Norm weights and biases away from 1 and 0, so a dropped one would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --- TPA -------------------------------------------------------------------------------------


def t6_reference(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """T6.py's CausalSelfAttention (CPLinear + RoPE + causal SDPA + c_proj) on a whole sequence."""
    b, t, _ = x.shape
    sh = m.shape
    h, d, rq, r = sh.num_heads, sh.head_dim, sh.q_rank, sh.k_rank
    a_q = m.W_A_q(x).view(b, t, h, rq)
    a_k = m.W_A_k(x).view(b, t, h, r)
    a_v = m.W_A_v(x).view(b, t, h, sh.v_rank)
    b_q = m.W_B_q(x).view(b, t, rq, d)
    b_k = m.W_B_k(x).view(b, t, r, d)
    b_v = m.W_B_v(x).view(b, t, sh.v_rank, d)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=F64) / d))  # T6's Rotary(head_dim)
    freqs = torch.outer(torch.arange(t, dtype=F64), inv_freq)
    cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def rotary(z: torch.Tensor) -> torch.Tensor:  # T6.py's apply_rotary_emb
        z1, z2 = z[..., : d // 2], z[..., d // 2:]
        return torch.cat([z1 * cos + z2 * sin, z1 * (-sin) + z2 * cos], 3)

    b_q, b_k = rotary(b_q), rotary(b_k)
    q = torch.bmm(a_q.reshape(b * t, h, rq), b_q.reshape(b * t, rq, d)).div(rq).view(b, t, h, d)
    k = torch.bmm(a_k.reshape(b * t, h, r), b_k.reshape(b * t, r, d)).div(r).view(b, t, h, d)
    v = torch.bmm(a_v.reshape(b * t, h, sh.v_rank), b_v.reshape(b * t, sh.v_rank, d)).div(sh.v_rank).view(b, t, h, d)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return m.c_proj(y.transpose(1, 2).reshape(b, t, h * d))


@pytest.mark.parametrize("variant", ["tpa", "tpa-factorized"])
def test_tpa_equals_t6_reference_in_prefill_and_decode(variant: str) -> None:
    m = build_variant(variant, TPA_SHAPE, dtype=F64, seed=1)
    x = _x(2, 11, TPA_SHAPE.hidden_size, seed=2)
    ref = t6_reference(m, x)
    m.allocate_cache(2, 11)
    assert rel_err(m(x, 0), ref) < 1e-12
    m.allocate_cache(2, 11)
    parts = [m(x[:, :6], 0), m(x[:, 6:8], 6)] + [m(x[:, i:i + 1], i) for i in range(8, 11)]
    assert rel_err(torch.cat(parts, dim=1), ref) < 1e-12


def test_tpa_factorized_equals_tpa_and_never_builds_k_or_v() -> None:
    full = build_variant("tpa", TPA_SHAPE, dtype=F64, seed=3)
    fact = build_variant("tpa-factorized", TPA_SHAPE, dtype=F64, seed=3)
    x = _x(3, 9, TPA_SHAPE.hidden_size, seed=4)
    for m in (full, fact):
        m.allocate_cache(3, 12)
    assert rel_err(fact(x, 0), full(x, 0)) < 1e-12
    step = _x(3, 2, TPA_SHAPE.hidden_size, seed=5)
    assert rel_err(fact(step, 9), full(step, 9)) < 1e-12
    q, k, v, _, _ = fact.core_inputs(step, 9)
    sh = TPA_SHAPE
    assert k.shape == (3, 11, 1, sh.k_rank * (sh.num_heads + sh.head_dim))  # the factor cache itself
    assert k.data_ptr() == fact.cache_tensors()["k_factors"].data_ptr()


def test_rope_on_b_rows_equals_rope_on_q() -> None:
    """RoPE is linear per row, so rotating B_q's rows then forming Q = A_q B_q equals rotating Q."""
    m = build_variant("tpa", TPA_SHAPE, dtype=F64, seed=6)
    m.allocate_cache(2, 10)
    x = _x(2, 4, TPA_SHAPE.hidden_size, seed=7)
    a_q, b_q_rot = m._factors(x, 5)
    sh = TPA_SHAPE
    b_q = m.W_B_q(x).view(2, 4, sh.q_rank, sh.head_dim)
    cos, sin = (t[5:9] for t in m._rope)
    from mlabench.variants.rope import apply_rotate_half

    q_then_rope = apply_rotate_half(torch.einsum("bshr,bsrd->bshd", a_q, b_q), cos, sin)
    rope_then_q = torch.einsum("bshr,bsrd->bshd", a_q, b_q_rot)
    assert rel_err(rope_then_q, q_then_rope) < 1e-13


# --- DSA -------------------------------------------------------------------------------------


def _rotate_half_first(z: torch.Tensor, d_r: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved RoPE on the first d_r dims (the indexer, after DeepSeek's fix)."""
    pe, nope = z[..., :d_r], z[..., d_r:]
    p1, p2 = pe[..., : d_r // 2], pe[..., d_r // 2:]
    return torch.cat([p1 * cos - p2 * sin, p2 * cos + p1 * sin, nope], dim=-1)


def _interleaved(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    zc = torch.view_as_complex(z.reshape(*z.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(zc * torch.complex(cos, sin)).flatten(-2)


def v32_reference(m: torch.nn.Module, x: torch.Tensor, prefix: int) -> torch.Tensor:
    """DeepSeek-V3.2-Exp's MLA.forward: prefill (MHA mode with the index mask) on x[:, :prefix], then
    one decode step (absorbed, index mask) per remaining token; outputs concatenated. The indexer
    applies the Hadamard rotation and caches the rotated key in FP8 (e4m3, one power-of-two scale per
    128 values) as the reference does; the query's FP8 quantisation is left out."""
    sh = m.shape
    b, total, _ = x.shape
    d_c, d_r, h = sh.kv_lora_rank, sh.rope_head_dim, sh.num_heads
    freqs = torch.outer(torch.arange(total, dtype=F64), inv_frequencies(d_r, sh))  # YaRN-corrected
    tau = sh.qk_head_dim**-0.5 * (0.1 * sh.rope_mscale_all_dim * math.log(sh.rope_scaling_factor) + 1.0) ** 2
    hadamard = torch.tensor(scipy.linalg.hadamard(sh.index_head_dim), dtype=F64) * sh.index_head_dim**-0.5
    wkv_b = m.kv_b_proj.weight.view(h, -1, d_c)
    kv_cache = torch.zeros(b, total, d_c, dtype=F64)
    pe_cache = torch.zeros(b, total, d_r, dtype=F64)
    k_cache = torch.zeros(b, total, sh.index_head_dim, dtype=F64)
    index_key = LatentFP8("fp8_e4m3", sh.index_head_dim, 0)
    outs = []
    steps = [(0, prefix)] + [(p, p + 1) for p in range(prefix, total)]
    for start, end in steps:
        xs = x[:, start:end]
        s = end - start
        cos, sin = freqs[start:end].cos(), freqs[start:end].sin()
        qr = m.q_a_layernorm(m.q_a_proj(xs))
        q = m.q_b_proj(qr).view(b, s, h, sh.qk_head_dim)
        q_nope, q_pe = q[..., : sh.head_dim], _interleaved(q[..., sh.head_dim:], cos[None, :, None], sin[None, :, None])
        kv = m.kv_a_proj_with_mqa(xs)
        c_kv = m.kv_a_layernorm(kv[..., :d_c])
        k_pe = _interleaved(kv[..., d_c:], cos[None], sin[None])
        kv_cache[:, start:end], pe_cache[:, start:end] = c_kv, k_pe
        # Indexer
        iq = m.indexer.wq_b(qr).view(b, s, sh.index_heads, sh.index_head_dim)
        iq = _rotate_half_first(iq, d_r, cos[None, :, None], sin[None, :, None]) @ hadamard
        ik = F.layer_norm(m.indexer.wk(xs), (sh.index_head_dim,), m.indexer.k_norm.weight, m.indexer.k_norm.bias,
                          1e-6)
        ik = _rotate_half_first(ik, d_r, cos[None], sin[None]) @ hadamard
        k_cache[:, start:end] = index_key.roundtrip({}, "index_k_cache", ik).to(F64)
        w = m.indexer.weights_proj(xs) * sh.index_heads**-0.5 * sh.index_head_dim**-0.5
        index_score = torch.einsum("bsj,bsjt->bst", w, F.relu(torch.einsum("bsjd,btd->bsjt", iq, k_cache[:, :end])))
        causal = torch.full((s, end), float("-inf"), dtype=F64).triu_(start + 1)
        index_score = index_score + causal
        topk = index_score.topk(min(sh.topk, end), dim=-1)[1]
        index_mask = torch.full((b, s, end), float("-inf"), dtype=F64).scatter_(-1, topk, 0) + causal
        if start == 0:  # MHA prefill
            kvb = m.kv_b_proj(c_kv).view(b, s, h, -1)
            k_nope, v = kvb[..., : sh.head_dim], kvb[..., sh.head_dim:]
            k = torch.cat([k_nope, k_pe[:, :, None].expand(-1, -1, h, -1)], dim=-1)
            scores = torch.einsum("bshd,bthd->bsht", torch.cat([q_nope, q_pe], -1), k) * tau
            scores = (scores + index_mask[:, :, None]).softmax(dim=-1)
            o = torch.einsum("bsht,bthd->bshd", scores, v)
        else:  # absorbed decode
            q_lat = torch.einsum("bshd,hdc->bshc", q_nope, wkv_b[:, : sh.head_dim])
            scores = (torch.einsum("bshc,btc->bsht", q_lat, kv_cache[:, :end])
                      + torch.einsum("bshr,btr->bsht", q_pe, pe_cache[:, :end])) * tau
            scores = (scores + index_mask[:, :, None]).softmax(dim=-1)
            o = torch.einsum("bsht,btc->bshc", scores, kv_cache[:, :end])
            o = torch.einsum("bshc,hdc->bshd", o, wkv_b[:, -sh.value_dim:])
        outs.append(m.o_proj(o.flatten(2)))
    return torch.cat(outs, dim=1)


def _dsa(seed: int, shape: AttentionShape = DSA_SHAPE) -> torch.nn.Module:
    m = build_variant("dsa", shape, dtype=F64, seed=seed)
    _randomize(m, seed)
    return m


def test_dsa_equals_the_v32_reference_prefill_then_decode() -> None:
    m = _dsa(1)
    x = _x(2, 14, DSA_SHAPE.hidden_size, seed=2)
    ref = v32_reference(m, x, prefix=9)  # prefill past topk (6): the index mask bites in both paths
    m.allocate_cache(2, 14)
    parts = [m(x[:, :9], 0)] + [m(x[:, i:i + 1], i) for i in range(9, 14)]
    assert rel_err(torch.cat(parts, dim=1), ref) < 1e-12


def test_hadamard_is_scipys_orthonormal_matrix() -> None:
    for n in (4, 16, 128):
        h = hadamard(n, "cpu", F64)
        assert torch.equal(h, torch.tensor(scipy.linalg.hadamard(n), dtype=F64))
        assert torch.allclose(h @ h.T / n, torch.eye(n, dtype=F64), atol=1e-15)
    with pytest.raises(ShapeError, match="power of two"):
        variant_class("dsa").normalize_shape(DSA_SHAPE.replace(index_head_dim=24))


def test_dsa_mask_is_the_brute_force_top_k_of_the_index_scores() -> None:
    m = _dsa(3)
    b, total, s = 2, 13, 3
    m.allocate_cache(b, total)
    x = _x(b, total, DSA_SHAPE.hidden_size, seed=4)
    m(x[:, : total - s], 0)
    start = total - s
    scores = m.index_scores(x[:, start:], m.q_a_layernorm(m.q_a_proj(x[:, start:])), start)
    mask, indices = m.index_topk(scores)
    k = DSA_SHAPE.topk
    for bi in range(b):
        for si in range(s):
            visible = start + si + 1
            row = scores[bi, si, :visible].tolist()
            order = sorted(range(visible), key=lambda t: -row[t])
            ranked = sorted(row, reverse=True)
            assert ranked[k - 1] > ranked[k]  # no tie at the k-th place: the expected set is unique
            expected = set(order[:k])
            assert set(torch.nonzero(mask[bi, si]).flatten().tolist()) == expected
            assert set(indices[bi, si].tolist()) == expected  # every query here sees more than k keys
    # A query seeing fewer than k keys keeps all of them, and its indices say -1 for the rest.
    m.allocate_cache(1, 8)
    early = _x(1, 4, DSA_SHAPE.hidden_size, seed=5)
    early_scores = m.index_scores(early, m.q_a_layernorm(m.q_a_proj(early)), 0)
    early_mask, early_idx = m.index_topk(early_scores)
    assert torch.equal(early_mask[0], torch.ones(4, 4, dtype=torch.bool).tril())
    assert early_idx.shape == (1, 4, 4) and (early_idx[0, 0] == -1).sum() == 3


@pytest.mark.parametrize(("mode", "tokens"), [("prefill", 6), ("decode", 1), ("decode", 2)])
def test_dsa_with_t_at_most_topk_is_mla_absorbed(mode: str, tokens: int) -> None:
    shape = DSA_SHAPE.replace(topk=9)
    dsa = _dsa(6, shape)
    mla = build_variant("mla-absorbed", shape, dtype=F64, seed=0)
    missing = mla.load_state_dict(dsa.state_dict(), strict=False)
    assert not missing.missing_keys and all(k.startswith("indexer.") for k in missing.unexpected_keys)
    x = _x(2, 9, shape.hidden_size, seed=7)
    for m in (dsa, mla):
        m.allocate_cache(2, 9)
    if mode == "prefill":
        assert rel_err(dsa(x[:, :tokens], 0), mla(x[:, :tokens], 0)) < 1e-12
        return
    dsa(x[:, : 9 - tokens], 0)
    mla(x[:, : 9 - tokens], 0)
    assert rel_err(dsa(x[:, 9 - tokens:], 9 - tokens), mla(x[:, 9 - tokens:], 9 - tokens)) < 1e-12


def test_dsa_kept_pairs_match_the_analytic_count() -> None:
    m = _dsa(8)
    m.allocate_cache(1, 12)
    x = _x(1, 12, DSA_SHAPE.hidden_size, seed=9)
    for start, s in ((0, 12), (9, 3), (11, 1), (2, 3)):
        scores = m.index_scores(x[:, start:start + s], m.q_a_layernorm(m.q_a_proj(x[:, start:start + s])), start)
        kept = int(m.index_topk(scores)[0].sum())
        step = prefill_step(1, 12) if start == 0 else decode_step(1, start + s, s)
        assert kept == selected_pairs(step, DSA_SHAPE.topk)


# --- cost model, presets and tensor parallelism (docs/variants.md §5, §6 and §8) -------------------------


def test_preset_cache_figures() -> None:
    t6 = from_name("t6-medium")
    assert analytic.kv_cache_bytes("tpa", t6, 1, 1) == 888
    assert analytic.kv_cache_bytes("tpa-factorized", t6, 1, 1) == 888
    v32 = from_name("deepseek-v3.2")
    assert analytic.kv_cache_bytes("dsa", v32, 1, 1) == 1152 + 132  # bf16 latent + the FP8 indexer key
    kimi = from_name("kimi-k2")
    assert analytic.kv_cache_bytes("mla-absorbed", kimi, 1, 1) == 1152
    assert kimi.mla_softmax_scale == pytest.approx(192**-0.5 * (0.1 * math.log(32) + 1) ** 2)


@pytest.mark.parametrize(("kv_dtype", "per_token", "latent_dtype"),
                         [("", 1152 + 132, torch.bfloat16), ("fp8_e4m3", 656 + 132, torch.uint8)])
def test_dsa_allocates_deepseek_v32s_cache(kv_dtype: str, per_token: int, latent_dtype: torch.dtype) -> None:
    """The cache the module allocates at DeepSeek-V3.2 dims (on the meta device: shapes and dtypes,
    no memory) holds the indexer key as 128 FP8 values + one fp32 scale whatever the latent's dtype."""
    v32 = from_name("deepseek-v3.2").replace(kv_dtype=kv_dtype)
    m = build_variant("dsa", v32, "meta", torch.bfloat16, seed=0)
    m.allocate_cache(2, 96)
    cache = m.cache_tensors()
    assert cache["index_k_cache"].dtype == torch.uint8 and cache["index_k_cache"].shape == (2, 96, 128 + 4)
    assert cache["kv_cache"].dtype == latent_dtype
    assert sum(t.nbytes for t in cache.values()) == 2 * 96 * per_token
    assert analytic.kv_cache_bytes("dsa", v32, 2, 96) == 2 * 96 * per_token
    assert analytic.kv_bytes_per_token_per_gpu("dsa", v32, 8) == per_token  # replicated on every GPU


def test_dsa_indexer_reads_the_dequantized_fp8_key() -> None:
    """In bf16 the indexer key still goes through FP8: what the indexer reads back is the key
    rounded to e4m3 with a power-of-two scale per 128 values, and the float64 reference reads the same."""
    from mlabench.measure import accuracy as acc

    shape = variant_class("dsa").normalize_shape(DSA_SHAPE)
    m = build_variant("dsa", shape, "cpu", torch.bfloat16, seed=1)
    m.allocate_cache(2, 40)
    m.fill_cache_random(32, seed=2)
    x = torch.randn(2, 1, shape.hidden_size, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    out = m(x, 32)
    rows = m.cache_tensors()["index_k_cache"]
    keys = LatentFP8("fp8_e4m3", shape.index_head_dim, 0).decode(rows[:, :33], torch.float32)
    assert keys.abs().sum() > 0 and torch.equal(keys, m._load("index_k_cache", (slice(None), slice(0, 33))).float())
    assert acc.compare(out, acc.reference_output(m, x, 32), "bfloat16").ok
    assert acc.compare(out, acc.reference_output(m, x, 32, unquantized=False), "bfloat16").ok


def test_tp_per_gpu_elements() -> None:
    t6 = from_name("t6-medium")
    tpa = variant_class("tpa")
    assert tpa.kv_elements_per_token_per_gpu(t6, 1) == tpa.kv_elements_per_token(t6) == 444
    with pytest.raises(ShapeError, match="tp"):
        tpa.kv_elements_per_token_per_gpu(t6, 2)  # 47 heads: only N = 1
    even = t6.replace(num_heads=48)
    assert variant_class("tpa-factorized").kv_elements_per_token_per_gpu(even, 8) == (2 + 2) * (48 // 8 + 64)
    v32 = from_name("deepseek-v3.2")
    dsa = variant_class("dsa")
    assert [dsa.kv_elements_per_token_per_gpu(v32, n) for n in (1, 2, 8)] == [512 + 64 + 128] * 3


def test_dsa_decode_costs_follow_mla_md() -> None:
    v32 = from_name("deepseek-v3.2")
    step = decode_step(1, 131072, 1)
    h, d_c, d_r = 128, 512, 64
    assert analytic.core_flops("dsa", v32, step) == 2 * 64 * 128 * 131072 + 2 * h * (2 * d_c + d_r) * 2048
    short = decode_step(1, 1000, 1)
    assert analytic.core_flops("dsa", v32, short) - 2 * 64 * 128 * 1000 == analytic.core_flops(
        "mla-absorbed", v32, short)
    dense = analytic.kernel_flops("dsa", v32, step)
    assert dense == 2 * h * (2 * d_c + d_r) * 2048


@pytest.mark.parametrize(("field", "value", "variant"), [("q_rank", 0, "tpa"), ("v_rank", 0, "tpa-factorized"),
                                                          ("topk", 0, "dsa")])
def test_bad_ranks_and_topk_are_one_line_exit_2(field: str, value: int, variant: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "--model", "tiny", "--variant", variant, "--backend", "eager", "--mode", "decode",
                            "--seq-len", "16", "--set", f"{field}={value}"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlabench: error:") and field in lines[0]


def test_factorized_kernel_figures_follow_its_core_inputs() -> None:
    """kernel_bytes counts exactly the factor tensors the core reads, the query factors and O."""
    sh = from_name("tiny", dtype="float64")
    m = build_variant("tpa-factorized", sh, dtype=F64)
    m.allocate_cache(2, 24)
    x = _x(2, 4, sh.hidden_size, seed=1)
    q, k, v, scale, causal = m.core_inputs(x, 20)
    o = m.native_core(q, k, v, scale, causal)
    step = decode_step(2, 24, 4)
    assert analytic.kernel_bytes("tpa-factorized", sh, step) == (q.numel() + k.numel() + v.numel() + o.numel()) * 8
    h, d = sh.num_heads, sh.head_dim
    per_pair = 2 * (sh.q_rank * sh.k_rank * d + h * sh.q_rank * sh.k_rank + h * sh.v_rank * d)
    assert analytic.kernel_flops("tpa-factorized", sh, step) == 2 * step.attended_pairs * per_pair


def test_dsa_kernel_bytes_read_only_the_kept_latent_rows() -> None:
    v32 = from_name("deepseek-v3.2")
    step = decode_step(4, 131072, 1)
    q_w, o_w = 128 * 576, 128 * 512
    assert analytic.kernel_bytes("dsa", v32, step) == 4 * (2048 * 576 + q_w + o_w) * 2
    # Cache traffic per step: every indexer key, the 2048 kept latent rows, one new token's rows.
    assert variant_class("dsa").cache_traffic_elements(v32, step) == 4 * (131072 * 128 + 2048 * 576 + 704)


def test_kv_lists_dsa_beside_mla_absorbed(capsys: pytest.CaptureFixture[str]) -> None:
    """dsa shares mla-absorbed's shape but not its cache: `mlabench kv` shows both."""
    import json

    code, out, _ = run_cli(["kv", "--preset", "deepseek-v3.2", "--seq-len", "131072", "--json"], capsys)
    assert code == 0
    rows = {r["variant"]: r["bytes_per_token_per_layer"] for r in json.loads(out)["variants"]}
    assert rows["mla-absorbed"] == 1152 and rows["dsa"] == 1152 + 132  # the indexer key in FP8, as DeepSeek


def test_variants_that_do_not_read_the_new_fields_record_zero() -> None:
    """tiny carries TPA ranks and an indexer; a gqa case's key must not (old baselines still join)."""
    from mlabench.variants import shape_for_variant

    tiny = from_name("tiny")
    gqa = shape_for_variant("gqa", tiny)
    assert (gqa.q_rank, gqa.k_rank, gqa.v_rank, gqa.index_heads, gqa.index_head_dim, gqa.topk) == (0,) * 6
    tpa = shape_for_variant("tpa", tiny)
    assert (tpa.q_rank, tpa.k_rank, tpa.v_rank, tpa.topk) == (4, 2, 2, 0)
    dsa = shape_for_variant("dsa", tiny)
    assert (dsa.q_rank, dsa.index_heads, dsa.index_head_dim, dsa.topk) == (0, 8, 32, 8)
