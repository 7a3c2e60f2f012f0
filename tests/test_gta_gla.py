"""gta, gla-expanded and gla-absorbed in float64 against the official code's math
(Dao-AILab/grouped-latent-attention `modeling_llama_GTA.py`, `modeling_llama_GLA.py`), the
absorbed == expanded identity with biases, and their cost model against docs/variants.md §5, §6 and §8."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mlabench import analytic
from mlabench.config import AttentionShape, ShapeError, from_name
from mlabench.step import decode_step
from mlabench.variants import build_variant, shape_for_variant

# Small, with every axis distinct so a transposed view cannot pass: H=4, G=2, D=12, d_r=6,
# h_c=2, d_g=10, d_q=20, d_v=8 (GLA's value width may differ from D here).
SHAPE = AttentionShape(hidden_size=24, num_heads=4, num_kv_heads=2, head_dim=12, rope_head_dim=6,
                       q_lora_rank=20, kv_lora_rank=20, num_latent_heads=2, v_head_dim=8, rope_theta=50.0,
                       dtype="float64")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Fresh random weights everywhere, norms and biases included (never the ones/zeros of init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


def _hf_rope(x: torch.Tensor, theta: float, positions: torch.Tensor) -> torch.Tensor:
    """HF Llama's apply_rotary_pos_emb on x (B, S, heads, d): emb = cat(freqs, freqs), x*cos + rotate_half(x)*sin."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    emb = torch.cat([positions[:, None].double() * inv] * 2, dim=-1)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax attention, q/k/v (B, S, H, d), every head its own K/V (the official repeat_kv)."""
    s = q.shape[1]
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    scores = scores.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("bhst,bthd->bshd", scores.softmax(-1), v)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def official_gta(m: torch.nn.Module, x: torch.Tensor, sh: AttentionShape) -> torch.Tensor:
    """LlamaFlashGTA.forward (prefill from position 0), written from the official file."""
    b, s, _ = x.shape
    h, g, d, r = sh.num_heads, sh.kv_heads, sh.head_dim, sh.rope_head_dim
    pos = torch.arange(s)
    q = (x @ m.q_proj.weight.T).view(b, s, h, d)
    kv = (x @ m.kv_proj.weight.T).view(b, s, g, d)
    q_nope, q_rope = q.split([d - r, r], dim=-1)
    key_rope = (x @ m.W_rope_k.weight.T + m.W_rope_k.bias).view(b, s, 1, r).expand(b, s, h, r)
    q_rope, key_rope = _hf_rope(q_rope, sh.rope_theta, pos), _hf_rope(key_rope, sh.rope_theta, pos)
    q = torch.cat([q_nope, q_rope], dim=-1)
    tied, v_rest = kv.split([d - r, r], dim=-1)
    tied, v_rest = tied.repeat_interleave(h // g, dim=2), v_rest.repeat_interleave(h // g, dim=2)
    k, v = torch.cat([tied, key_rope], dim=-1), torch.cat([tied, v_rest], dim=-1)
    o = _attend(q, k, v, d**-0.5)  # flash_attn_func's default scale: head dim ** -0.5
    return o.reshape(b, s, h * d) @ m.o_proj.weight.T


def official_gla(m: torch.nn.Module, x: torch.Tensor, sh: AttentionShape) -> torch.Tensor:
    """LlamaFlashGLA.forward (prefill from position 0), generalized from its two latent heads to h_c."""
    b, s, _ = x.shape
    h, d, r, dv, h_c = sh.num_heads, sh.head_dim, sh.rope_head_dim, sh.value_dim, sh.num_latent_heads
    d_g, eps, pos = sh.kv_lora_rank // h_c, sh.rms_norm_eps, torch.arange(s)
    qn = _rms(x @ m.W_dQ.weight.T + m.W_dQ.bias, m.q_norm.weight, eps)
    q = (qn @ m.W_uQ_rope.weight.T + m.W_uQ_rope.bias).view(b, s, h, d + r)
    compressed = x @ m.W_dKV.weight.T + m.W_dKV.bias
    c, key_rope = compressed.split([sh.kv_lora_rank, r], dim=-1)
    width = max(d, dv)  # the official code pads K and V to one width for flash attention
    k = torch.zeros(b, s, h, width + r, dtype=x.dtype)
    v = torch.zeros(b, s, h, width + r, dtype=x.dtype)
    per = h // h_c
    for j in range(h_c):
        up = getattr(m, f"W_ukv_{j + 1}")
        cj = _rms(c[..., j * d_g:(j + 1) * d_g], getattr(m, f"kv_norm_{j + 1}").weight, eps)
        kvj = (cj @ up.weight.T + up.bias).view(b, s, per, d + dv)
        k[:, :, j * per:(j + 1) * per, :d] = kvj[..., :d]
        v[:, :, j * per:(j + 1) * per, :dv] = kvj[..., d:]
    q_full = torch.zeros(b, s, h, width + r, dtype=x.dtype)
    q_full[..., :d] = q[..., :d]
    q_full[..., width:] = _hf_rope(q[..., d:], sh.rope_theta, pos)
    k[..., width:] = _hf_rope(key_rope.view(b, s, 1, r), sh.rope_theta, pos)
    o = _attend(q_full, k, v, (d + r) ** -0.5)  # the padded width's default scale when width = D
    return o[..., :dv].reshape(b, s, h * dv) @ m.o_proj.weight.T


def _run(variant: str, sh: AttentionShape, x: torch.Tensor, seed: int = 1) -> tuple[torch.nn.Module, torch.Tensor]:
    m = build_variant(variant, sh, dtype=torch.float64)
    _randomize(m, seed)
    m.allocate_cache(x.shape[0], x.shape[1])
    return m, m(x, 0)


def test_gta_matches_the_official_code() -> None:
    x = torch.randn(2, 9, SHAPE.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m, y = _run("gta", SHAPE, x)
    torch.testing.assert_close(y, official_gta(m, x, m.shape), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["gla-expanded", "gla-absorbed"])
def test_gla_matches_the_official_code(variant: str) -> None:
    sh = SHAPE.replace(v_head_dim=0)  # the official code has d_v = D (its padded V relies on it)
    x = torch.randn(2, 9, sh.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    m, y = _run(variant, sh, x)
    torch.testing.assert_close(y, official_gla(m, x, m.shape), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("q_lora_rank", [20, 0])
def test_gla_absorbed_equals_expanded_with_biases(q_lora_rank: int) -> None:
    sh = SHAPE.replace(q_lora_rank=q_lora_rank)
    g = torch.Generator().manual_seed(5)
    prompt = torch.randn(2, 7, sh.hidden_size, dtype=torch.float64, generator=g)
    new = torch.randn(2, 2, sh.hidden_size, dtype=torch.float64, generator=g)
    outs = []
    for variant in ("gla-expanded", "gla-absorbed"):
        m = build_variant(variant, sh, dtype=torch.float64)
        _randomize(m, 6)  # same names, same weights: both read the same checkpoint
        assert all(p.abs().min() > 0 for n, p in m.named_parameters() if n.endswith("bias"))
        m.allocate_cache(2, 9)
        outs.append((m(prompt, 0), m(new, 7)))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gla_with_one_latent_head_is_mla_shaped() -> None:
    """h_c = 1: one latent of width d_c serving every head, MLA's cache (d_c + d_r)."""
    sh = SHAPE.replace(num_latent_heads=1)
    assert analytic.kv_elements_per_token("gla-absorbed", sh) == analytic.kv_elements_per_token("mla-absorbed", sh)
    assert shape_for_variant("gla-absorbed", sh).kv_heads == 1


@pytest.mark.parametrize(("overrides", "field"), [
    ({"num_latent_heads": 3}, "num_latent_heads"),  # 3 does not divide H = 4
    ({"num_latent_heads": 4, "kv_lora_rank": 18}, "num_latent_heads"),  # nor kv_lora_rank
    ({"num_latent_heads": 0}, "num_latent_heads"),
    ({"kv_lora_rank": 0}, "kv_lora_rank"),
])
def test_gla_refuses_impossible_latent_heads(overrides: dict, field: str) -> None:
    with pytest.raises(ShapeError, match=field):
        shape_for_variant("gla-absorbed", SHAPE.replace(**overrides))


def test_gta_refuses_a_rope_key_as_wide_as_the_head() -> None:
    with pytest.raises(ShapeError, match="rope_head_dim"):
        shape_for_variant("gta", SHAPE.replace(rope_head_dim=12))
    assert shape_for_variant("gta", from_name("llama-3-8b")).rope_head_dim == 64  # the paper's D/2 by default


def test_gla_xl_cache_figures_from_mla_md() -> None:
    """docs/variants.md §8: MHA 8192, GQA-4 2048, GTA-4 1152, MLA 1152, GLA-2 1152 B per token per layer."""
    sh = from_name("gla-xl")
    got = {v: analytic.kv_cache_bytes(v, sh, 1, 1) for v in ("mha", "gqa", "gta", "mla-absorbed", "gla-absorbed",
                                                              "gla-expanded")}
    assert got == {"mha": 8192, "gqa": 2048, "gta": 1152, "mla-absorbed": 1152, "gla-absorbed": 1152,
                   "gla-expanded": 1152}


def test_gla_absorbed_does_about_half_of_mla_core_flops() -> None:
    sh, step = from_name("gla-xl"), decode_step(1, 4096, 1)
    ratio = analytic.core_flops("gla-absorbed", sh, step) / analytic.core_flops("mla-absorbed", sh, step)
    assert ratio == (2 * 256 + 64) / (2 * 512 + 64)  # 2H(2d_g + d_r)T over 2H(2d_c + d_r)T: 0.53


@pytest.mark.parametrize(("variant", "tp", "per_gpu"), [
    ("gla-absorbed", 2, 640), ("mla-absorbed", 2, 1152), ("gla-absorbed", 8, 640), ("gta", 2, 640),
    ("gta", 8, 384), ("gqa", 8, 512), ("mha", 8, 1024), ("mla-expanded", 2, 5120), ("mla-latent", 8, 1152),
    ("gla-absorbed", 1, 1152), ("gqa", 1, 2048),
])
def test_per_gpu_cache_under_tensor_parallelism(variant: str, tp: int, per_gpu: int) -> None:
    """docs/variants.md §6 at gla-xl: GQA copies KV heads past G, MLA keeps its whole latent everywhere,
    GLA-2 at TP 2 holds 640 B per token per layer per GPU where MLA holds 1152."""
    assert analytic.kv_cache_bytes_per_gpu(variant, from_name("gla-xl"), 1, 1, tp) == per_gpu


def test_tp_must_divide_the_heads() -> None:
    with pytest.raises(ShapeError, match="tp"):
        analytic.kv_cache_bytes_per_gpu("gqa", from_name("gla-xl"), 1, 1, 3)



def _claims_rows(tp: int) -> pd.DataFrame:
    """The claims suite's gla-xl rows as a sweep writes them: analytic columns from the runner, the
    cache bytes measured on modules that allocate their cache (8 slots: the claims are per token)."""

    from mlabench.case import Case
    from mlabench.runner import analytic_columns
    from mlabench.variants.registry import torch_dtype

    rows = []
    for variant, scope in [("gqa", "step"), ("gta", "step"), ("gla-absorbed", "step"), ("mla-absorbed", "step"),
                           ("gla-absorbed", "core"), ("mla-absorbed", "core")]:
        sh = shape_for_variant(variant, from_name("gla-xl"))
        case = Case("claims", "gla-xl", variant, "eager", "decode", "cpu", 1, 8, 1, sh, scope=scope,
                    tp=tp if scope == "step" and variant.startswith(("gla", "mla")) else 1)
        m = build_variant(variant, sh, dtype=torch_dtype(sh.dtype))
        m.allocate_cache(1, 8)
        rows.append({**case.key, **analytic_columns(case), "status": "ok", "kv_cache_bytes_measured":
                     m.cache_nbytes()})
    return pd.DataFrame(rows)


def test_gla_paper_claims_beside_their_measurement() -> None:
    from mlabench.claims import evaluate_claims

    got = {c.claim: c for c in evaluate_claims(_claims_rows(tp=2)) if c.source.startswith("GTA/GLA")}
    assert len(got) == 4 and all(c.verdict == "holds" for c in got.values()), got
    gta = next(c for k, c in got.items() if k.startswith("GTA-4"))
    assert gta.measured == 1152 / 2048
    # Swept at tp 1, the per-GPU claims have no rows to stand on: said, not faked.
    at_tp1 = [c for c in evaluate_claims(_claims_rows(tp=1)) if "TP 2" in c.claim]
    assert len(at_tp1) == 2 and all(c.verdict == "not measured" for c in at_tp1)
