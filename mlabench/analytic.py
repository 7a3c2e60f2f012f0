"""The analytic cost model: KV-cache bytes, parameter counts, FLOPs and bytes moved.

Pure functions of (variant, shape, step), no torch, so `mlabench kv`, reports and
compare can use them anywhere. Formulas follow MLA.md:

- cache elements per token per layer: MHA/GQA/MQA 2*G*D; mla-expanded H*(d_qk+d_v);
  mla-latent / mla-absorbed d_c+d_r; lowrank-kv 2*H*r; linformer 2*k*H*D per
  *sequence* (it keeps the projected K/V, whatever the length).
- FLOPs count multiply-adds as 2 and only (query, key) pairs a causal mask lets
  through; projections are counted per new token. RMSNorm, RoPE and softmax are
  left out (a few FLOPs per element, noise next to the matmuls).
- Bytes are a lower bound on traffic: weights once, the cache tokens attended
  once (the MLA latent once, since V is a slice of K), cache writes, x, y, Q and O;
  for mla-latent and lowrank-kv also the expanded K/V written and read back.
- Timing scope "core" has its own figures (`kernel_flops`, `kernel_bytes`): the core alone
  on the tensors the variant hands it, so a kernel's roofline share reads off core rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlabench.config import GQA_FAMILY, MLA_VARIANTS, AttentionShape, shape_for_variant


@dataclass(frozen=True)
class Step:
    """One timed call: `new_tokens` queries at positions [context, context + new_tokens)."""

    batch: int
    context: int  # P: tokens already in the cache
    new_tokens: int  # S
    causal: bool = True

    @property
    def total(self) -> int:  # T = P + S
        return self.context + self.new_tokens

    @property
    def attended_pairs(self) -> int:
        """(query, key) pairs per sequence and head: query s sees P + s + 1 keys when causal."""
        p, s = self.context, self.new_tokens
        return s * p + s * (s + 1) // 2 if self.causal else s * self.total


def prefill_step(batch: int, seq_len: int) -> Step:
    return Step(batch=batch, context=0, new_tokens=seq_len)


def decode_step(batch: int, seq_len: int, q_len: int) -> Step:
    """seq_len counts the whole context including the q_len new tokens."""
    return Step(batch=batch, context=seq_len - q_len, new_tokens=q_len)


# --- KV cache -------------------------------------------------------------------------------
def kv_elements_per_token(variant: str, shape: AttentionShape) -> int:
    """Cache elements per token per layer (not defined for linformer: see kv_cache_elements)."""
    sh = shape_for_variant(variant, shape)
    if variant in GQA_FAMILY:
        return 2 * sh.kv_heads * sh.head_dim
    if variant == "mla-expanded":
        return sh.num_heads * (sh.qk_head_dim + sh.value_dim)
    if variant in ("mla-latent", "mla-absorbed"):
        return sh.kv_lora_rank + sh.rope_head_dim
    if variant == "lowrank-kv":
        return 2 * sh.num_heads * sh.kv_lora_rank
    raise ValueError(f"{variant} has no per-token cache size (it caches a fixed number of projected rows)")


def kv_cache_elements(variant: str, shape: AttentionShape, batch: int, seq_len: int) -> int:
    """Cache elements of one layer for `batch` sequences of `seq_len` slots."""
    if variant == "linformer":
        sh = shape_for_variant(variant, shape)
        return batch * 2 * sh.kv_lora_rank * sh.num_heads * sh.head_dim
    return batch * seq_len * kv_elements_per_token(variant, shape)


def kv_cache_bytes(variant: str, shape: AttentionShape, batch: int, seq_len: int, layers: int = 1) -> int:
    """Exact bytes of the cache the module allocates, times `layers` for whole-model figures."""
    return kv_cache_elements(variant, shape, batch, seq_len) * shape.element_bytes * layers


# --- parameters -----------------------------------------------------------------------------
def param_count(variant: str, shape: AttentionShape, seq_len: int | None = None) -> int:
    """Exact parameter count of one layer's module (linformer's depends on n = seq_len)."""
    sh = shape_for_variant(variant, shape)
    h, d = sh.num_heads, sh.hidden_size
    if variant in GQA_FAMILY:
        dh = sh.head_dim
        return d * h * dh + 2 * d * sh.kv_heads * dh + h * dh * d
    if variant in MLA_VARIANTS:
        if sh.q_lora_rank > 0:
            q = d * sh.q_lora_rank + sh.q_lora_rank + sh.q_lora_rank * h * sh.qk_head_dim
        else:
            q = d * h * sh.qk_head_dim
        kv_a = d * (sh.kv_lora_rank + sh.rope_head_dim) + sh.kv_lora_rank
        kv_b = sh.kv_lora_rank * h * (sh.head_dim + sh.value_dim)
        return q + kv_a + kv_b + h * sh.value_dim * d
    if variant == "lowrank-kv":
        dh, r = sh.head_dim, sh.kv_lora_rank
        return d * h * dh + 2 * d * h * r + 2 * h * dh * r + h * dh * d
    if variant == "linformer":
        if seq_len is None:
            raise ValueError("linformer's parameter count depends on seq_len (its [k, n] projections)")
        dh = sh.head_dim
        return 4 * d * h * dh + 2 * sh.kv_lora_rank * seq_len
    raise ValueError(f"unknown variant {variant!r}")


# --- FLOPs ----------------------------------------------------------------------------------
def core_flops(variant: str, shape: AttentionShape, step: Step) -> int:
    """Attention core (scores and weighted sum, plus cache expansion where the variant does it)."""
    sh = shape_for_variant(variant, shape)
    h, b = sh.num_heads, step.batch
    pairs = step.attended_pairs
    if variant in GQA_FAMILY:
        return b * 4 * h * sh.head_dim * pairs
    if variant == "mla-expanded":
        return b * 2 * h * (sh.qk_head_dim + sh.value_dim) * pairs
    if variant == "mla-latent":
        expand = 2 * h * sh.kv_lora_rank * (sh.head_dim + sh.value_dim) * step.total
        return b * (2 * h * (sh.qk_head_dim + sh.value_dim) * pairs + expand)
    if variant == "mla-absorbed":
        return b * 2 * h * (2 * sh.kv_lora_rank + sh.rope_head_dim) * pairs
    if variant == "lowrank-kv":
        expand = 2 * 2 * h * sh.kv_lora_rank * sh.head_dim * step.total
        return b * (4 * h * sh.head_dim * pairs + expand)
    if variant == "linformer":
        n, k, dh = step.total, sh.kv_lora_rank, sh.head_dim
        seq_proj = 2 * 2 * k * n * h * dh
        return b * (seq_proj + 4 * h * dh * n * k)
    raise ValueError(f"unknown variant {variant!r}")


def projection_flops(variant: str, shape: AttentionShape, step: Step) -> int:
    """Projections of the new tokens (and MLA's run-time absorption)."""
    sh = shape_for_variant(variant, shape)
    h, d = sh.num_heads, sh.hidden_size
    tokens = step.batch * step.new_tokens
    if variant in GQA_FAMILY or variant == "linformer":
        dh = sh.head_dim
        return tokens * 2 * (d * h * dh + 2 * d * sh.kv_heads * dh + h * dh * d)
    if variant == "lowrank-kv":
        dh, r = sh.head_dim, sh.kv_lora_rank
        return tokens * 2 * (d * h * dh + 2 * d * h * r + h * dh * d)
    if variant in MLA_VARIANTS:
        if sh.q_lora_rank > 0:
            q = d * sh.q_lora_rank + sh.q_lora_rank * h * sh.qk_head_dim
        else:
            q = d * h * sh.qk_head_dim
        per_token = q + d * (sh.kv_lora_rank + sh.rope_head_dim) + h * sh.value_dim * d
        if variant == "mla-expanded":
            per_token += sh.kv_lora_rank * h * (sh.head_dim + sh.value_dim)  # up-project new tokens
        elif variant == "mla-absorbed":
            per_token += h * sh.head_dim * sh.kv_lora_rank + h * sh.kv_lora_rank * sh.value_dim  # W_UK, W_UV
        return tokens * 2 * per_token
    raise ValueError(f"unknown variant {variant!r}")


def flops(variant: str, shape: AttentionShape, step: Step) -> int:
    return core_flops(variant, shape, step) + projection_flops(variant, shape, step)


# --- bytes moved ----------------------------------------------------------------------------
def _qo_widths(variant: str, sh: AttentionShape) -> tuple[int, int]:
    """Per-token widths of the core's Q input and O output."""
    h = sh.num_heads
    if variant == "mla-absorbed":
        return h * (sh.kv_lora_rank + sh.rope_head_dim), h * sh.kv_lora_rank
    if variant in MLA_VARIANTS:
        return h * sh.qk_head_dim, h * sh.value_dim
    return h * sh.head_dim, h * sh.head_dim


def bytes_moved(variant: str, shape: AttentionShape, step: Step) -> int:
    """Minimum bytes a step must move: weights, cache read/written, activations."""
    sh = shape_for_variant(variant, shape)
    eb = sh.element_bytes
    b, s, t = step.batch, step.new_tokens, step.total
    weights = param_count(variant, sh, seq_len=t) * eb
    q_w, o_w = _qo_widths(variant, sh)
    activations = b * s * (2 * sh.hidden_size + q_w + o_w) * eb  # x in, y out, Q, O
    if variant == "linformer":
        k, h, dh = sh.kv_lora_rank, sh.num_heads, sh.head_dim
        full_kv = 2 * t * h * dh  # K, V written then read by the sequence projection
        projected = 2 * k * h * dh  # projected K, V written then read by the core
        return weights + activations + b * 2 * (full_kv + projected) * eb
    per_token = kv_elements_per_token(variant, sh)
    cache = b * (t + s) * per_token * eb  # read T tokens, write S
    extra = 0
    if variant == "mla-latent":
        extra = b * 2 * t * sh.num_heads * (sh.qk_head_dim + sh.value_dim) * eb  # expanded K/V write + read
    elif variant == "lowrank-kv":
        extra = b * 2 * t * 2 * sh.num_heads * sh.head_dim * eb
    return weights + activations + cache + extra


# --- the attention core alone (timing scope "core") ----------------------------------------
def _core_kv_widths(variant: str, sh: AttentionShape) -> tuple[int, int]:
    """Per-token widths of the K and V the core reads (the variant's `core_inputs`); for the MLA
    latent V is a slice of K, so its width is 0 (read once)."""
    h = sh.num_heads
    if variant in GQA_FAMILY:
        return sh.kv_heads * sh.head_dim, sh.kv_heads * sh.head_dim
    if variant in ("mla-expanded", "mla-latent"):  # mla-latent hands the core the re-expanded K, V
        return h * sh.qk_head_dim, h * sh.value_dim
    if variant == "mla-absorbed":
        return sh.kv_lora_rank + sh.rope_head_dim, 0
    if variant in ("lowrank-kv", "linformer"):  # up-projected (lowrank) or sequence-projected (linformer)
        return h * sh.head_dim, h * sh.head_dim
    raise ValueError(f"unknown variant {variant!r}")


def _core_keys(variant: str, sh: AttentionShape, step: Step) -> int:
    """Keys the core reads per sequence: linformer's k projected rows, else every cached token."""
    return sh.kv_lora_rank if variant == "linformer" else step.total


def kernel_flops(variant: str, shape: AttentionShape, step: Step) -> int:
    """FLOPs of the core alone: scores and weighted sum over the pairs it attends, no cache
    expansion (that happens before the core, in `core_inputs`)."""
    sh = shape_for_variant(variant, shape)
    h, b = sh.num_heads, step.batch
    if variant == "linformer":  # bidirectional over k projected rows
        return b * 4 * h * sh.head_dim * step.new_tokens * sh.kv_lora_rank
    pairs = step.attended_pairs
    if variant in GQA_FAMILY or variant == "lowrank-kv":
        return b * 4 * h * sh.head_dim * pairs
    if variant in ("mla-expanded", "mla-latent"):
        return b * 2 * h * (sh.qk_head_dim + sh.value_dim) * pairs
    if variant == "mla-absorbed":
        return b * 2 * h * (2 * sh.kv_lora_rank + sh.rope_head_dim) * pairs
    raise ValueError(f"unknown variant {variant!r}")


def kernel_bytes(variant: str, shape: AttentionShape, step: Step) -> int:
    """Minimum bytes of the core alone: K and V read once (the MLA latent once), Q read, O written."""
    sh = shape_for_variant(variant, shape)
    eb = sh.element_bytes
    k_w, v_w = _core_kv_widths(variant, sh)
    q_w, o_w = _qo_widths(variant, sh)
    b, s = step.batch, step.new_tokens
    return b * (_core_keys(variant, sh, step) * (k_w + v_w) + s * (q_w + o_w)) * eb


def scoped_flops(variant: str, shape: AttentionShape, step: Step, scope: str) -> int:
    return kernel_flops(variant, shape, step) if scope == "core" else flops(variant, shape, step)


def scoped_bytes(variant: str, shape: AttentionShape, step: Step, scope: str) -> int:
    return kernel_bytes(variant, shape, step) if scope == "core" else bytes_moved(variant, shape, step)
