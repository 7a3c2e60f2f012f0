"""The variants compute the functions docs/variants.md defines, exactly, in float64."""

from __future__ import annotations

import pytest
import torch

from mlabench.config import AttentionShape, from_name
from mlabench.errors import UnsupportedError
from mlabench.variants import VARIANT_CLASSES, build_variant

F64 = torch.float64
INCREMENTAL = [n for n, cls in VARIANT_CLASSES.items() if cls.supports_decode]

# Small MLA shapes with and without query compression; odd-ish sizes catch reshape bugs.
MLA_SHAPES = {
    "q_lora": AttentionShape(hidden_size=96, num_heads=4, head_dim=12, rope_head_dim=8, v_head_dim=10,
                             q_lora_rank=24, kv_lora_rank=20, dtype="float64"),
    "no_q_lora": AttentionShape(hidden_size=80, num_heads=3, head_dim=16, rope_head_dim=6, v_head_dim=16,
                                q_lora_rank=0, kv_lora_rank=24, dtype="float64"),
    "yarn": AttentionShape(hidden_size=64, num_heads=2, head_dim=8, rope_head_dim=8, v_head_dim=8,
                           q_lora_rank=16, kv_lora_rank=12, rope_scaling_factor=40.0,
                           rope_mscale_all_dim=1.0, rope_original_max_position=8, dtype="float64"),
}
SMALL = from_name("tiny", dtype="float64")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _x(batch: int, tokens: int, hidden: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, hidden, generator=g, dtype=F64)


@pytest.mark.parametrize("variant", INCREMENTAL)
@pytest.mark.parametrize("q_len", [1, 2])
def test_prefill_then_decode_equals_one_prefill(variant: str, q_len: int) -> None:
    shape = SMALL
    prefix, steps = 7, 3
    total = prefix + steps * q_len
    m = build_variant(variant, shape, dtype=F64, seed=1)
    x = _x(2, total, shape.hidden_size, seed=2)

    m.allocate_cache(2, total)
    full = m(x, 0)

    m.allocate_cache(2, total)
    parts = [m(x[:, :prefix], 0)]
    for i in range(steps):
        start = prefix + i * q_len
        parts.append(m(x[:, start:start + q_len], start))
    assert rel_err(torch.cat(parts, dim=1), full) < 1e-12


@pytest.mark.parametrize("variant", INCREMENTAL)
def test_repeated_decode_step_overwrites_the_same_slots(variant: str) -> None:
    m = build_variant(variant, SMALL, dtype=F64, seed=3)
    m.allocate_cache(1, 12)
    m(_x(1, 10, SMALL.hidden_size, 4), 0)
    x = _x(1, 2, SMALL.hidden_size, 5)
    first = m(x, 10)
    before = {k: t.clone() for k, t in m.cache_tensors().items()}
    second = m(x, 10)
    assert torch.equal(first, second)
    for k, t in m.cache_tensors().items():
        assert torch.equal(t, before[k])


def test_linformer_refuses_decode() -> None:
    m = build_variant("linformer", SMALL, dtype=F64)
    m.allocate_cache(1, 8)
    m(_x(1, 8, SMALL.hidden_size, 0), 0)
    with pytest.raises(UnsupportedError, match="no incremental decode"):
        m(_x(1, 1, SMALL.hidden_size, 1), 7)


@pytest.mark.parametrize("shape_name", list(MLA_SHAPES))
@pytest.mark.parametrize("q_len", [1, 2])
def test_mla_strategies_agree(shape_name: str, q_len: int) -> None:
    shape = MLA_SHAPES[shape_name]
    prefix = 9
    total = prefix + q_len
    ref = build_variant("mla-expanded", shape, dtype=F64, seed=7)
    others = [build_variant(n, shape, dtype=F64, seed=99) for n in ("mla-latent", "mla-absorbed")]
    for m in others:
        m.load_state_dict(ref.state_dict())  # same checkpoint names, same weights
    x = _x(2, total, shape.hidden_size, seed=8)
    outs = []
    for m in (ref, *others):
        m.allocate_cache(2, total)
        prefill = m(x[:, :prefix], 0)
        decode = m(x[:, prefix:], prefix)
        outs.append((prefill, decode))
    for prefill, decode in outs[1:]:
        assert rel_err(prefill, outs[0][0]) < 1e-10
        assert rel_err(decode, outs[0][1]) < 1e-10


def test_gqa_degenerates_to_mha_and_mqa() -> None:
    h = SMALL.num_heads
    x = _x(2, 6, SMALL.hidden_size, seed=11)
    for g, other in ((h, "mha"), (1, "mqa")):
        gqa = build_variant("gqa", SMALL.replace(num_kv_heads=g), dtype=F64, seed=12)
        twin = build_variant(other, SMALL, dtype=F64, seed=13)
        twin.load_state_dict(gqa.state_dict())
        for m in (gqa, twin):
            m.allocate_cache(2, 6)
        assert rel_err(gqa(x, 0), twin(x, 0)) < 1e-14


def test_gqa_head_grouping_matches_repeated_kv() -> None:
    """Head h reads KV head h // (H/G): same as MHA whose K/V weights repeat each group's rows."""
    shape = SMALL.replace(num_kv_heads=2)
    gqa = build_variant("gqa", shape, dtype=F64, seed=21)
    mha = build_variant("mha", shape, dtype=F64, seed=22)
    rep = shape.num_heads // shape.kv_heads
    sd = gqa.state_dict()
    for name in ("k_proj.weight", "v_proj.weight"):
        w = sd[name].view(shape.kv_heads, shape.head_dim, -1)
        sd[name] = w.repeat_interleave(rep, dim=0).reshape(-1, w.shape[-1])
    mha.load_state_dict(sd)
    x = _x(1, 5, shape.hidden_size, seed=23)
    for m in (gqa, mha):
        m.allocate_cache(1, 5)
    assert rel_err(gqa(x, 0), mha(x, 0)) < 1e-14


def test_mla_loads_deepseek_checkpoint_names() -> None:
    shape = MLA_SHAPES["q_lora"]
    m = build_variant("mla-absorbed", shape, dtype=F64)
    names = {"q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight",
             "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight"}
    assert set(m.state_dict()) == names
    sh = shape
    expected = {
        "q_a_proj.weight": (sh.q_lora_rank, sh.hidden_size),
        "q_b_proj.weight": (sh.num_heads * sh.qk_head_dim, sh.q_lora_rank),
        "kv_a_proj_with_mqa.weight": (sh.kv_lora_rank + sh.rope_head_dim, sh.hidden_size),
        "kv_b_proj.weight": (sh.num_heads * (sh.head_dim + sh.value_dim), sh.kv_lora_rank),
        "o_proj.weight": (sh.hidden_size, sh.num_heads * sh.value_dim),
    }
    for name, dims in expected.items():
        assert tuple(m.state_dict()[name].shape) == dims
    lite = build_variant("mla-latent", MLA_SHAPES["no_q_lora"], dtype=F64)
    assert "q_proj.weight" in lite.state_dict() and "q_a_proj.weight" not in lite.state_dict()


def test_llama_checkpoint_names() -> None:
    m = build_variant("gqa", SMALL, dtype=F64)
    assert set(m.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}


@pytest.mark.parametrize("variant", list(VARIANT_CLASSES))
def test_float64_reference_matches_low_precision_run(variant: str) -> None:
    shape = SMALL.replace(dtype="float32")
    m = build_variant(variant, shape, dtype=torch.float32, seed=31)
    m.allocate_cache(2, 10)
    x = torch.randn(2, 10, shape.hidden_size, generator=torch.Generator().manual_seed(32))
    out = m(x, 0)
    ref = m.reference()
    assert ref.weight_dtype == F64
    assert all(t.dtype == F64 for t in ref.cache_tensors().values())
    ref.allocate_cache(2, 10)
    assert rel_err(out.double(), ref(x.double(), 0)) < 1e-5


def test_mla_decode_reads_cache_filled_at_random() -> None:
    """Decode against a synthetic long context: absorbed on the latent cache equals
    latent re-expansion of the same cache (both read the same [c_kv, k_pe])."""
    shape = MLA_SHAPES["no_q_lora"]
    lat = build_variant("mla-latent", shape, dtype=F64, seed=41)
    absb = build_variant("mla-absorbed", shape, dtype=F64, seed=42)
    absb.load_state_dict(lat.state_dict())
    for m in (lat, absb):
        m.allocate_cache(2, 40)
        m.fill_cache_random(38, torch.Generator().manual_seed(43))
    assert torch.equal(lat.cache_tensors()["kv_cache"], absb.cache_tensors()["kv_cache"])
    x = _x(2, 2, shape.hidden_size, 44)
    assert rel_err(absb(x, 38), lat(x, 38)) < 1e-10


def test_softmax_scale_presets() -> None:
    assert from_name("deepseek-v3").mla_softmax_scale == pytest.approx(0.135234, abs=1e-6)
    assert from_name("deepseek-v2").mla_softmax_scale == pytest.approx(0.114721, abs=1e-6)
    assert from_name("deepseek-v2-lite").mla_softmax_scale == pytest.approx(0.114721, abs=1e-6)
    no_yarn = from_name("deepseek-v3", rope_scaling_factor=1.0)
    assert no_yarn.mla_softmax_scale == pytest.approx(192**-0.5)


# --- independent implementations straight from docs/variants.md --------------------------------------
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope_interleaved(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    d = x.shape[-1]
    ang = pos[:, None].double() * theta ** (-torch.arange(0, d, 2, dtype=F64) / d)  # (S, d/2)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(ang), ang)
    rot = rot.view(1, ang.shape[0], *([1] * (x.dim() - 3)), d // 2)
    return torch.view_as_real(z * rot).flatten(-2)


def _rope_half(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    d = x.shape[-1]
    ang = pos[:, None].double() * theta ** (-torch.arange(0, d, 2, dtype=F64) / d)
    ang = torch.cat((ang, ang), -1)[None, :, None, :]
    rot = torch.cat((-x[..., d // 2:], x[..., : d // 2]), -1)
    return x * ang.cos() + rot * ang.sin()


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:  # (B, H, S, T), S == T
    s = scores.shape[-1]
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


@pytest.mark.parametrize("variant", ["mla-expanded", "mla-latent", "mla-absorbed"])
def test_mla_matches_the_math_contract(variant: str) -> None:
    sh = MLA_SHAPES["q_lora"].replace(rope_theta=50.0)
    m = build_variant(variant, sh, dtype=F64, seed=51)
    w = {k: v for k, v in m.state_dict().items()}
    b, s, h = 2, 6, sh.num_heads
    x = _x(b, s, sh.hidden_size, 52)
    pos = torch.arange(s)
    c_q = _rms(x @ w["q_a_proj.weight"].T, w["q_a_layernorm.weight"], sh.rms_norm_eps)
    q = (c_q @ w["q_b_proj.weight"].T).view(b, s, h, sh.qk_head_dim)
    q_nope, q_pe = q[..., : sh.head_dim], _rope_interleaved(q[..., sh.head_dim:], pos, sh.rope_theta)
    kv = x @ w["kv_a_proj_with_mqa.weight"].T
    c_kv = _rms(kv[..., : sh.kv_lora_rank], w["kv_a_layernorm.weight"], sh.rms_norm_eps)
    k_pe = _rope_interleaved(kv[..., sh.kv_lora_rank:], pos, sh.rope_theta)  # (B, S, d_r)
    kvb = (c_kv @ w["kv_b_proj.weight"].T).view(b, s, h, sh.head_dim + sh.value_dim)
    k = torch.cat((kvb[..., : sh.head_dim], k_pe[:, :, None].expand(-1, -1, h, -1)), -1)
    v = kvb[..., sh.head_dim:]
    qq = torch.cat((q_nope, q_pe), -1)
    scores = torch.einsum("bshd,bthd->bhst", qq, k) * sh.qk_head_dim**-0.5
    o = torch.einsum("bhst,bthd->bshd", _causal_softmax(scores), v)
    y = o.reshape(b, s, -1) @ w["o_proj.weight"].T
    m.allocate_cache(b, s)
    assert rel_err(m(x, 0), y) < 1e-12


@pytest.mark.parametrize("variant", ["mha", "gqa", "mqa"])
def test_gqa_family_matches_the_math_contract(variant: str) -> None:
    sh = SMALL.replace(num_kv_heads=2, rope_theta=30.0)
    m = build_variant(variant, sh, dtype=F64, seed=61)
    msh = m.shape
    w = m.state_dict()
    b, s, h, g, d = 2, 5, msh.num_heads, msh.kv_heads, msh.head_dim
    x = _x(b, s, sh.hidden_size, 62)
    pos = torch.arange(s)
    q = _rope_half((x @ w["q_proj.weight"].T).view(b, s, h, d), pos, sh.rope_theta)
    k = _rope_half((x @ w["k_proj.weight"].T).view(b, s, g, d), pos, sh.rope_theta)
    v = (x @ w["v_proj.weight"].T).view(b, s, g, d)
    k, v = (t.repeat_interleave(h // g, dim=2) for t in (k, v))
    scores = torch.einsum("bshd,bthd->bhst", q, k) / d**0.5
    o = torch.einsum("bhst,bthd->bshd", _causal_softmax(scores), v)
    y = o.reshape(b, s, -1) @ w["o_proj.weight"].T
    m.allocate_cache(b, s)
    assert rel_err(m(x, 0), y) < 1e-12


def test_chunked_reference_attention_equals_eager() -> None:
    from mlabench.variants.attention import chunked_attention, eager_attention

    g = torch.Generator().manual_seed(71)
    q = torch.randn(2, 9, 4, 8, generator=g, dtype=F64)
    k = torch.randn(2, 13, 2, 8, generator=g, dtype=F64)
    v = torch.randn(2, 13, 2, 6, generator=g, dtype=F64)
    for causal in (True, False):
        full = eager_attention(q, k, v, 0.3, causal)
        chunked = chunked_attention(q, k, v, 0.3, causal, max_scores=2 * 4 * 13 * 2)  # 2 queries a block
        assert rel_err(chunked, full) < 1e-14
