"""The variants against HuggingFace transformers' own attention modules, in float64.

`LlamaAttention` is the reference for mha / gqa / mqa and `DeepseekV3Attention`
(interleaved RoPE, as DeepSeek's checkpoints) for mla-expanded, mla-latent and
mla-absorbed: both query paths (q_a_proj + q_a_layernorm + q_b_proj, and plain
q_proj), with and without YaRN, with a cache shorter and longer than the YaRN
original length. Each HF module is built offline from a config object, its
parameters are randomized, and our module loads them by checkpoint name
(`load_state_dict(strict=True)`, so every name must match). Both then run the
same prefill, a 1-token and a 2-token decode step, each against its own KV
cache: HF's `DynamicCache` with the mask from HF's `create_causal_mask`, ours
the preallocated cache; every step's output must agree to 1e-10.

The float64 path. HF computes some pieces in float32 whatever the module's
dtype, and these are replaced by the same formulas in float64:
- RoPE: `ROPE_INIT_FUNCTIONS` and the rotary-embedding modules build `inv_freq`
  and cos/sin in float32. The inverse frequencies are recomputed in float64 from
  HF's formula (default RoPE, or YaRN's `_compute_yarn_parameters`), checked
  against HF's own float32 result to float32 rounding, and the attention module
  receives `position_embeddings=(cos, sin)` built from them in float64 in HF's
  layout (`cat(freqs, freqs)`, times HF's `attention_factor`).
- RMSNorm: `DeepseekV3RMSNorm` casts to float32; its `forward` is replaced by the
  same formula in the input dtype (checked against the original to float32 rounding).
- Attention: HF's eager path runs softmax in float32, so the modules use HF's
  `sdpa` implementation, which stays in float64 on the CPU.

YaRN configs set `mscale == mscale_all_dim`, as DeepSeek's published configs do:
HF's YaRN `attention_factor` (which scales cos and sin) is then
get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) = 1, and the only
YaRN factor on the scores is DeepseekV3Attention's mscale^2 softmax scale, which
is what our shapes (one `rope_mscale_all_dim` field) describe.
"""

from __future__ import annotations

import math
import types
from itertools import pairwise

import pytest
import torch

from mlabench.config import AttentionShape
from mlabench.variants import build_variant

transformers = pytest.importorskip("transformers")

from transformers import DeepseekV3Config, LlamaConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.masking_utils import create_causal_mask  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaAttention  # noqa: E402

F64 = torch.float64
BATCH = 2
ORIGINAL_MAX = 64  # the YaRN original length: small, so a "long" cache stays fast
# (prefill tokens, cache slots): the short case stays inside ORIGINAL_MAX, the long one goes past it.
LENGTHS = {"short": (9, 16), "long": (70, 80)}
STEPS = (1, 2)  # decode steps after the prefill, in tokens


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --- float64 RoPE in HF's conventions ---------------------------------------------------------------
def _hf_inv_freq_f64(cfg: transformers.PreTrainedConfig, dim: int) -> tuple[torch.Tensor, float]:
    """HF's inverse frequencies and attention_factor, recomputed in float64 (default RoPE, or
    `_compute_yarn_parameters` with truncate=True), then checked against HF's float32 result."""
    params = cfg.rope_parameters
    base = params["rope_theta"]
    freqs = 1.0 / base ** (torch.arange(0, dim, 2, dtype=F64) / dim)
    attention_factor = 1.0
    if params["rope_type"] == "yarn":
        factor, orig = params["factor"], params["original_max_position_embeddings"]

        def correction_dim(rotations: float) -> float:
            return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(params["beta_fast"])), 0)
        high = min(math.ceil(correction_dim(params["beta_slow"])), dim - 1)
        if low == high:
            high += 0.001
        extrapolation = 1 - ((torch.arange(dim // 2, dtype=F64) - low) / (high - low)).clamp(0, 1)
        freqs = (freqs / factor) * (1 - extrapolation) + freqs * extrapolation
        hf_freqs, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
        assert attention_factor == 1.0  # mscale == mscale_all_dim (see the module docstring)
    else:
        hf_freqs = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # HF's default, float32
    assert rel_err(hf_freqs.double(), freqs) < 1e-6  # the recomputation is HF's formula, not a new one
    return freqs, attention_factor


def _position_embeddings(cfg: transformers.PreTrainedConfig, dim: int, start: int, stop: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (BATCH, stop - start, dim), float64, in HF's cat(freqs, freqs) layout."""
    freqs, attention_factor = _hf_inv_freq_f64(cfg, dim)
    angles = torch.arange(start, stop, dtype=F64)[:, None] * freqs  # (S, dim/2)
    emb = torch.cat((angles, angles), dim=-1).expand(BATCH, -1, -1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def _f64_rmsnorm(norm: torch.nn.Module) -> None:
    """Swap DeepseekV3RMSNorm's float32 cast for the same formula in the input dtype."""
    original = norm.forward

    def forward(self: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    probe = torch.randn(3, norm.weight.shape[0], dtype=F64, generator=torch.Generator().manual_seed(0))
    norm.forward = types.MethodType(forward, norm)
    assert rel_err(norm(probe), original(probe)) < 1e-6


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Fresh random weights: matrices ~ N(0, 1/fan_in), norm weights around 1 (never all ones)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64)
            p.copy_(1 + 0.2 * noise if p.dim() == 1 else noise / p.shape[-1] ** 0.5)


def _run_both(hf: torch.nn.Module, cfg: transformers.PreTrainedConfig, ours: torch.nn.Module,
              rope_dim: int, prefill: int, slots: int, seed: int) -> None:
    """Prefill, then one 1-token and one 2-token decode step on both modules; compare every step."""
    cfg._attn_implementation = "sdpa"
    hf.double().eval()
    _randomize(hf, seed)
    ours.load_state_dict(hf.state_dict(), strict=True)
    ours.allocate_cache(BATCH, slots)
    cache = DynamicCache(config=cfg)
    total = prefill + sum(STEPS)
    x = torch.randn(BATCH, total, cfg.hidden_size, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    bounds = [0, prefill, prefill + STEPS[0], total]
    with torch.no_grad():
        for start, stop in pairwise(bounds):
            chunk = x[:, start:stop]
            positions = torch.arange(start, stop)[None].expand(BATCH, -1)
            # Positional arguments: the cache keyword is `past_key_values` up to transformers 5.23, `cache` from 5.24.
            mask = create_causal_mask(cfg, chunk, None, cache, positions)
            expected, _ = hf(chunk, _position_embeddings(cfg, rope_dim, start, stop), mask, cache)
            got = ours(chunk, start)
            assert rel_err(got, expected) < 1e-10, f"tokens [{start}, {stop})"


# --- Llama: mha / gqa / mqa --------------------------------------------------------------------------
LLAMA_KV_HEADS = {"mha": 6, "gqa": 2, "mqa": 1}


@pytest.mark.parametrize("length", list(LENGTHS))
@pytest.mark.parametrize("variant", list(LLAMA_KV_HEADS))
def test_gqa_family_matches_hf_llama_attention(variant: str, length: str) -> None:
    heads, kv_heads, head_dim, hidden = 6, LLAMA_KV_HEADS[variant], 8, 48
    cfg = LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=32, num_hidden_layers=1, vocab_size=16, max_position_embeddings=128,
        attention_bias=False, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    shape = AttentionShape(hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                           rope_theta=500.0, dtype="float64")
    ours = build_variant(variant, shape, dtype=F64)
    prefill, slots = LENGTHS[length]
    _run_both(LlamaAttention(cfg, layer_idx=0), cfg, ours, head_dim, prefill, slots, seed=11)


# --- DeepSeek-V3: mla-expanded / mla-latent / mla-absorbed --------------------------------------------
# Two small MLA layers: V3-like (query compression, mscale_all_dim 1.0) and V2-Lite-like
# (plain q_proj, mscale_all_dim 0.707); odd sizes catch reshape bugs.
MLA_DIMS = {
    "q_lora": dict(hidden_size=48, num_heads=4, head_dim=12, rope_head_dim=8, v_head_dim=10,
                   q_lora_rank=24, kv_lora_rank=20, mscale=1.0),
    "q_proj": dict(hidden_size=40, num_heads=3, head_dim=16, rope_head_dim=6, v_head_dim=14,
                   q_lora_rank=0, kv_lora_rank=18, mscale=0.707),
}
YARN_FACTOR = 40.0


def _deepseek_pair(dims: dict, yarn: bool) -> tuple[DeepseekV3Config, AttentionShape]:
    d = dict(dims)
    mscale = d.pop("mscale")
    rope: dict = {"rope_type": "default", "rope_theta": 10000.0}
    yarn_fields: dict = {}
    if yarn:
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": YARN_FACTOR, "mscale": mscale,
                "mscale_all_dim": mscale, "original_max_position_embeddings": ORIGINAL_MAX,
                "beta_fast": 32.0, "beta_slow": 1.0}
        yarn_fields = dict(rope_scaling_factor=YARN_FACTOR, rope_mscale_all_dim=mscale,
                           rope_original_max_position=ORIGINAL_MAX, rope_beta_fast=32.0, rope_beta_slow=1.0)
    cfg = DeepseekV3Config(
        hidden_size=d["hidden_size"], num_attention_heads=d["num_heads"], num_key_value_heads=d["num_heads"],
        q_lora_rank=d["q_lora_rank"] or None, kv_lora_rank=d["kv_lora_rank"], qk_nope_head_dim=d["head_dim"],
        qk_rope_head_dim=d["rope_head_dim"], v_head_dim=d["v_head_dim"], rope_interleave=True,
        rope_parameters=rope, max_position_embeddings=int(YARN_FACTOR) * ORIGINAL_MAX, rms_norm_eps=1e-6,
        attention_bias=False, num_hidden_layers=1, vocab_size=16, intermediate_size=32,
        moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
    )
    # HF's DeepseekV3RMSNorm is built with its default eps 1e-6, which the shape matches.
    shape = AttentionShape(**d, rope_theta=10000.0, rms_norm_eps=1e-6, dtype="float64", **yarn_fields)
    return cfg, shape


@pytest.mark.parametrize("length", list(LENGTHS))
@pytest.mark.parametrize("yarn", [False, True], ids=["rope", "yarn"])
@pytest.mark.parametrize("dims", list(MLA_DIMS))
@pytest.mark.parametrize("variant", ["mla-expanded", "mla-latent", "mla-absorbed"])
def test_mla_matches_hf_deepseek_v3_attention(variant: str, dims: str, yarn: bool, length: str) -> None:
    cfg, shape = _deepseek_pair(MLA_DIMS[dims], yarn)
    hf = DeepseekV3Attention(cfg, layer_idx=0).double()
    assert hf.scaling == pytest.approx(shape.mla_softmax_scale, rel=1e-15)  # same tau, YaRN or not
    for norm in (hf.q_a_layernorm, hf.kv_a_layernorm):
        if norm is not None:
            _f64_rmsnorm(norm)
    ours = build_variant(variant, shape, dtype=F64)
    prefill, slots = LENGTHS[length]
    _run_both(hf, cfg, ours, shape.rope_head_dim, prefill, slots, seed=21)
