"""Tensor Product Attention (Zhang et al. 2025, arXiv 2501.06425; tensorgi/T6 `model/T6.py`).

Per token, head factors A = (x W_A^T).view(H, R) and token factors B = (x W_B^T).view(R, D),
no biases; Q = A_q B_q / R_q, K = A_k B_k / R_k, V = A_v B_v / R_v; score scale D^-0.5
(docs/variants.md §5). RoPE rotates the rows of B_q and B_k only (it commutes with the product),
as T6.py does: rotate-half by -theta. The cache holds A_k, rotated B_k, A_v, B_v:
(R_k + R_v)(H + D) elements per token per layer, as two tensors per token row
[A (H*R) | B (R*D)], `k_factors` and `v_factors`.

- `tpa` materialises K and V (B, T, H, D) from the factor cache on every call and attends
  through the generic core (so SDPA can serve it).
- `tpa-factorized` never builds K or V: its own core contracts the factors,
  P[t,r,s] = B_q[r] . B_k[t,s];  L[h,t] = sum_{r,s} A_q[h,r] A_k[t,h,s] P[t,r,s] / (R_q R_k) * D^-0.5;
  o[h] = sum_t softmax_t(L[h]) * sum_u A_v[t,h,u] B_v[t,u,:] / R_v.

Weight names follow T6's `CPLinear` (`W_A_q`, `W_A_k`, `W_A_v`, `W_B_q`, `W_B_k`, `W_B_v`) and
its output projection `c_proj`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mlabench.config import AttentionShape, ShapeError
from mlabench.variants.attention import causal_mask
from mlabench.variants.base import AttentionVariant
from mlabench.variants.layers import linear
from mlabench.variants.registry import register_variant
from mlabench.variants.rope import apply_rotate_half, rope_table

if TYPE_CHECKING:
    from mlabench.step import Step


class _TPABase(AttentionVariant):
    serving_layouts = False  # its cache is read and written by (batch, token) slices
    family = "tpa"
    caches = "head factors A_k, A_v + token factors B_k (rotated), B_v"
    cache_formula = "(R_k+R_v)*(H+D)"
    shape_fields = ("q_rank", "k_rank", "v_rank")

    @classmethod
    def normalize_shape(cls, shape: AttentionShape) -> AttentionShape:
        for name in ("q_rank", "k_rank", "v_rank"):
            if getattr(shape, name) < 1:
                raise ShapeError(name, f"{cls.name} needs {name} >= 1, got {getattr(shape, name)}")
        if shape.head_dim % 2:
            raise ShapeError("head_dim", f"{cls.name} rotates B rows of width head_dim: must be even")
        return shape.replace(num_kv_heads=shape.num_heads)  # every head has its own K and V

    @classmethod
    def kv_elements_per_token(cls, sh: AttentionShape) -> int:
        return (sh.k_rank + sh.v_rank) * (sh.num_heads + sh.head_dim)

    @classmethod
    def kv_elements_per_token_per_gpu(cls, sh: AttentionShape, tp: int) -> int:
        """A factors split with the heads, B factors replicate: (R_k + R_v)(H/N + D) (docs/variants.md §6)."""
        cls.check_tp(sh, tp)
        return (sh.k_rank + sh.v_rank) * (sh.num_heads // tp + sh.head_dim)

    @classmethod
    def param_count(cls, sh: AttentionShape, seq_len: int | None = None) -> int:
        h, d, dh = sh.num_heads, sh.hidden_size, sh.head_dim
        return d * (h + dh) * (sh.q_rank + sh.k_rank + sh.v_rank) + h * dh * d

    def __init__(self, shape: AttentionShape, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(shape, device, dtype)
        sh = self.shape
        h, d, dh = sh.num_heads, sh.hidden_size, sh.head_dim
        self.W_A_q = linear(d, h * sh.q_rank, device, dtype)
        self.W_A_k = linear(d, h * sh.k_rank, device, dtype)
        self.W_A_v = linear(d, h * sh.v_rank, device, dtype)
        self.W_B_q = linear(d, sh.q_rank * dh, device, dtype)
        self.W_B_k = linear(d, sh.k_rank * dh, device, dtype)
        self.W_B_v = linear(d, sh.v_rank * dh, device, dtype)
        self.c_proj = linear(h * dh, d, device, dtype)

    def _build_length_state(self, max_seq_len: int) -> None:
        cos, sin = rope_table(self.shape.head_dim, self.shape, max_seq_len, self.weight_device)
        self._rope = (cos, -sin)  # T6.py rotates by -theta: y1 = x1 cos + x2 sin, y2 = x2 cos - x1 sin

    def cache_shapes(self, batch: int, max_seq_len: int) -> dict[str, tuple[int, ...]]:
        sh = self.shape
        width = sh.num_heads + sh.head_dim
        return {"k_factors": (batch, max_seq_len, sh.k_rank * width),
                "v_factors": (batch, max_seq_len, sh.v_rank * width)}

    def _factors(self, x: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
        """Query factors A_q (B, S, H, R_q), rotated B_q (B, S, R_q, D); writes this step's K and V
        factor rows into the cache."""
        b, s, _ = x.shape
        sh = self.shape
        h, dh = sh.num_heads, sh.head_dim
        end = start_pos + s
        cos, sin = (t[start_pos:end] for t in self._rope)
        a_q = self.W_A_q(x).view(b, s, h, sh.q_rank)
        b_q = apply_rotate_half(self.W_B_q(x).view(b, s, sh.q_rank, dh), cos, sin)  # RoPE on B rows only
        b_k = apply_rotate_half(self.W_B_k(x).view(b, s, sh.k_rank, dh), cos, sin)
        new = (slice(None, b), slice(start_pos, end))
        self._store("k_factors", new, torch.cat((self.W_A_k(x), b_k.flatten(2)), dim=-1))
        self._store("v_factors", new, torch.cat((self.W_A_v(x), self.W_B_v(x)), dim=-1))
        return a_q, b_q

    def _cached_factors(self, t: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        """A (B, T, H, R) and B (B, T, R, D) views of one factor cache slice (B, T, R*(H+D))."""
        h, dh = self.shape.num_heads, self.shape.head_dim
        return t[..., : h * rank].unflatten(-1, (h, rank)), t[..., h * rank:].unflatten(-1, (rank, dh))

    def core_output(self, o: Tensor) -> Tensor:
        return self.c_proj(o.flatten(2))  # TPA's output projection is `c_proj`


@register_variant
class TPA(_TPABase):
    name = "tpa"
    caches = "A_k, A_v, B_k, B_v factors; K, V rebuilt every call"

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        h, dh = sh.num_heads, sh.head_dim
        build = 2 * h * dh * (sh.k_rank + sh.v_rank) * step.total  # K = A_k B_k, V = A_v B_v over the cache
        return step.batch * (4 * h * dh * step.attended_pairs + build)

    @classmethod
    def projection_flops(cls, sh: AttentionShape, step: Step) -> int:
        q_build = 2 * sh.num_heads * sh.q_rank * sh.head_dim  # Q = A_q B_q for the new tokens
        return super().projection_flops(sh, step) + step.batch * step.new_tokens * q_build

    @classmethod
    def cache_traffic_elements(cls, sh: AttentionShape, step: Step) -> int:
        built = step.batch * 2 * step.total * 2 * sh.num_heads * sh.head_dim  # K and V written, then read
        return super().cache_traffic_elements(sh, step) + built

    @classmethod
    def transient_elements(cls, sh: AttentionShape, step: Step) -> int:
        return step.batch * step.total * 2 * sh.num_heads * sh.head_dim

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """q (B, S, H, D), K and V (B, T, H, D) built from the factor cache, scale D^-0.5."""
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        sh = self.shape
        end = start_pos + s
        a_q, b_q = self._factors(x, start_pos)
        seen = (slice(None, b), slice(None, end))
        a_k, b_k = self._cached_factors(self._load("k_factors", seen), sh.k_rank)
        a_v, b_v = self._cached_factors(self._load("v_factors", seen), sh.v_rank)
        q = torch.einsum("bshr,bsrd->bshd", a_q, b_q) / sh.q_rank
        k = torch.einsum("bthr,btrd->bthd", a_k, b_k) / sh.k_rank
        v = torch.einsum("bthr,btrd->bthd", a_v, b_v) / sh.v_rank
        return q, k, v, sh.head_dim**-0.5, True


@register_variant
class TPAFactorized(_TPABase):
    name = "tpa-factorized"
    caches = "A_k, A_v, B_k, B_v factors; K, V never built"
    generic_core = False

    @classmethod
    def core_flops(cls, sh: AttentionShape, step: Step) -> int:
        h, dh, rq, rk, rv = sh.num_heads, sh.head_dim, sh.q_rank, sh.k_rank, sh.v_rank
        return step.batch * 2 * (rq * rk * dh + h * rq * rk + h * rv * dh) * step.attended_pairs

    @classmethod
    def kernel_flops(cls, sh: AttentionShape, step: Step) -> int:
        return cls.core_flops(sh, step)

    @classmethod
    def qo_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        return sh.q_rank * (sh.num_heads + sh.head_dim), sh.num_heads * sh.head_dim

    @classmethod
    def core_kv_widths(cls, sh: AttentionShape) -> tuple[int, int]:
        width = sh.num_heads + sh.head_dim
        return sh.k_rank * width, sh.v_rank * width

    @classmethod
    def context_working_bytes(cls, sh: AttentionShape, step: Step, expands_kv: bool) -> int:
        """Beside the factor copies (base class), the native core's products per (query, key):
        B_q . B_k for every rank pair, and the rank loops' (B, H, S, T) partial scores, product and
        weighted probabilities, in fp32 or wider."""
        pairs = step.batch * step.new_tokens * step.total
        per_pair = sh.q_rank * sh.k_rank + 3 * sh.num_heads
        return super().context_working_bytes(sh, step, expands_kv) + pairs * per_pair * max(sh.element_bytes, 4)

    def core_inputs(self, x: Tensor, start_pos: int = 0) -> tuple[Tensor, Tensor, Tensor, float, bool]:
        """q the query factors [A_q | B_q] (B, S, 1, R_q*(H+D)); k, v the factor caches' views
        (B, T, 1, R*(H+D)); scale D^-0.5. `native_core` reads them."""
        self._check_step(x, start_pos)
        b, s, _ = x.shape
        end = start_pos + s
        a_q, b_q = self._factors(x, start_pos)
        q = torch.cat((a_q.flatten(2), b_q.flatten(2)), dim=-1)[:, :, None]
        seen = (slice(None, b), slice(None, end))
        k = self._load("k_factors", seen)[:, :, None]  # a view unless the cache is FP8
        v = self._load("v_factors", seen)[:, :, None]
        return q, k, v, self.shape.head_dim**-0.5, True

    def native_core(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor) -> Tensor:
        """Attention from the factors alone; o (B, S, H, D). Rank loops are a handful of steps, each
        one (B, H, S, T) product: no (.., H, D) key or value per cached token is ever formed."""
        sh = self.shape
        rq, rk, rv = sh.q_rank, sh.k_rank, sh.v_rank
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        a_q, b_q = self._cached_factors(q[:, :, 0], rq)  # (B, S, H, R_q), (B, S, R_q, D)
        a_k, b_k = self._cached_factors(k[:, :, 0], rk)  # (B, T, H, R_k), (B, T, R_k, D)
        a_v, b_v = self._cached_factors(v[:, :, 0], rv)
        s, t = q.shape[1], k.shape[1]
        p = torch.einsum("bsrd,btud->bstru", b_q, b_k)  # (B, S, T, R_q, R_k): B_q . B_k
        scores = 0
        for u in range(rk):
            scores = scores + torch.einsum("bshr,bstr->bhst", a_q, p[..., u]) * a_k[..., u].transpose(1, 2)[:, :, None]
        scores = scores.to(acc) * (scale / (rq * rk))  # (B, H, S, T)
        if isinstance(causal, Tensor):
            scores = scores.masked_fill(~causal[:, None], float("-inf"))
        elif causal and s > 1:
            scores = scores.masked_fill(~causal_mask(s, t, q.device), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        out = 0
        for u in range(rv):
            weighted = probs * a_v[..., u].transpose(1, 2)[:, :, None]  # (B, H, S, T)
            out = out + torch.einsum("bhst,btd->bshd", weighted, b_v[:, :, u])
        return out / rv
