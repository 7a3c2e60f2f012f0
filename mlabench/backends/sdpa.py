"""`sdpa`: `torch.nn.functional.scaled_dot_product_attention` as the attention core.

Serves every variant, each through the one core contract (variants/attention.py): the GQA family with
`enable_gqa` (no K/V repeat in memory for the fused kernels), mla-expanded and mla-latent
(q/k 192 wide, v 128), mla-absorbed as one-KV-head attention (q/k d_c + d_r wide, v the
first d_c columns of k, a view), lowrank-kv, and linformer (not causal). Tensors are
transposed (views) from the package layout (B, T, H, D) to SDPA's (B, H, T, D) at the
boundary and back.

Bottom-right causal masking: one new token (S == 1) sees every key, so no mask; S == T is
SDPA's own `is_causal` (top-left and bottom-right coincide); any other S < T gets an
explicit bool mask, built once per case. Kernels that take no mask (flash) are then
unsupported for that case, which the probe below reports.

One KV head under many query heads (mla-absorbed, whose 576-wide head no flash kernel
takes): `enable_gqa` is accepted only by the flash and math kernels, and math serves it with
an H-fold copy of the latent. So on the first call the core asks the dispatcher whether the
memory-efficient kernel takes K and V expanded to every query head as zero-stride views
(`expand`, no copy: each head reads the same latent rows); where it does, that is what
every call passes, else `enable_gqa` as before.

Option `sdpa_kernel`: auto | flash | efficient | cudnn | math. A named kernel runs alone
inside `torch.nn.attention.sdpa_kernel`; `prepare` runs the step once in it and turns
PyTorch's "no available kernel" into UnsupportedError with PyTorch's own reason (head dims,
dtype, device, mask), so a kernel is never silently swapped for another. `detail` records
the kernel: the named one, or for `auto` the one PyTorch's dispatcher picks for these inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from mlabench.backends.registry import Prepared, StepInputs, register_backend
from mlabench.case import Case
from mlabench.errors import UnsupportedError, UsageError
from mlabench.variants.attention import causal_mask, ragged_mask
from mlabench.variants.base import AttentionVariant

SDPA_KERNELS: dict[str, SDPBackend | None] = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
_KERNEL_NAMES = {b: name for name, b in SDPA_KERNELS.items() if b is not None}
# PyTorch's RuntimeError texts when the enabled kernels cannot take the inputs.
_NO_KERNEL_MESSAGES = ("No available kernel", "No viable backend")


def sdpa_kernel_option(case: Case) -> str:
    """The case's `sdpa_kernel` option, validated."""
    name = case.option("sdpa_kernel", "auto")
    if name not in SDPA_KERNELS:
        raise UsageError(f"sdpa_kernel: unknown kernel {name!r} (choose from {', '.join(SDPA_KERNELS)})")
    return name


class SDPACore:
    """core(q, k, v, scale, causal) -> o through SDPA; records the dispatcher's choice on first call."""

    def __init__(self) -> None:
        self._mask: Tensor | None = None
        self.chosen: str | None = None  # kernel PyTorch picks for these inputs, set on the first call
        self.expand_kv: bool | None = None  # one KV head passed as a zero-stride expansion; set on the first call

    def _bottom_right_mask(self, s: int, t: int, device: torch.device) -> Tensor:
        # One case has one (S, T): build the (S, T) mask once, outside the timed calls.
        if self._mask is None or self._mask.shape != (s, t) or self._mask.device != device:
            self._mask = causal_mask(s, t, device)
        return self._mask

    def _ragged_mask(self, lengths: Tensor, s: int, t: int, causal: bool) -> Tensor:
        # One case has one set of lengths: build the (B, 1, S, T) mask once, outside the timed calls.
        if self._mask is None or self._mask.shape != (lengths.shape[0], 1, s, t):
            self._mask = ragged_mask(lengths, s, t, causal)[:, None]
        return self._mask

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool | Tensor,
                 lengths: Tensor | None = None) -> Tensor:
        s, t = q.shape[1], k.shape[1]
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), views
        mask: Tensor | None = None
        is_causal = False
        if isinstance(causal, Tensor):
            mask = causal[:, None]  # (B, 1, S, T): an explicit mask (dsa's index mask), broadcast over heads
        elif lengths is not None:  # ragged: a boolean mask per sequence, broadcast over heads
            mask = self._ragged_mask(lengths, s, t, causal)
        elif causal and s > 1:
            if s == t:
                is_causal = True
            else:
                mask = self._bottom_right_mask(s, t, q.device)  # (S, T), broadcast over B and H
        gqa = q.shape[2] != k.shape[2]
        if gqa and k.shape[2] == 1:
            hq = q.shape[2]
            if self.expand_kv is None:
                self.expand_kv = _dispatcher_choice(qh, kh.expand(-1, hq, -1, -1), vh.expand(-1, hq, -1, -1),
                                                    mask, is_causal, scale, False) == "efficient"
            if self.expand_kv:
                kh, vh, gqa = kh.expand(-1, hq, -1, -1), vh.expand(-1, hq, -1, -1), False  # (B, H, T, D), stride 0 on H
        if self.chosen is None:
            self.chosen = _dispatcher_choice(qh, kh, vh, mask, is_causal, scale, gqa)
        o = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
        )  # (B, Hq, S, Dv)
        return o.transpose(1, 2)  # (B, S, Hq, Dv)


def _dispatcher_choice(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float, gqa: bool
) -> str:
    """Which kernel SDPA will run for these inputs under the kernels enabled now; '' if unknown."""
    try:
        # Private but cheap: the same selection SDPA itself makes, without running it.
        choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, is_causal, scale=scale, enable_gqa=gqa)
        return _KERNEL_NAMES.get(SDPBackend(choice), "")
    except Exception:  # a missing or changed private API only loses the label
        return ""


def _no_kernel_reason(
    kernel: str, device: torch.device, err: RuntimeError, caught: list[warnings.WarningMessage]
) -> str:
    # PyTorch explains each rejected kernel in warnings; the generic "not used because:" line
    # only announces the next one.
    reasons = [
        str(w.message).split(" (Triggered internally")[0]
        for w in caught
        if "because" not in str(w.message) and str(w.message).strip()
    ]
    if reasons:
        return f"sdpa kernel {kernel} cannot serve this case on {device.type}: " + "; ".join(dict.fromkeys(reasons))
    return f"sdpa kernel {kernel} is not available on {device.type} for these inputs ({str(err).strip()})"


@register_backend(
    "sdpa",
    description="torch scaled_dot_product_attention core (flash / efficient / cudnn / math, or auto)",
    fused=True,
    options={"sdpa_kernel": sdpa_kernel_option},
)
def prepare_sdpa(module: AttentionVariant, case: Case, inputs: StepInputs) -> Prepared:
    kernel = sdpa_kernel_option(case)
    backend = SDPA_KERNELS[kernel]
    if not type(module).generic_core:
        raise UnsupportedError(f"{module.name} attends through its own core, not (q, k, v) attention that SDPA "
                               "could replace")
    x, start = inputs.x, inputs.start_pos
    core = SDPACore()

    run_core: Callable[..., Tensor]
    if backend is None:
        run_core = core
    else:
        def run_core(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                     lengths: Tensor | None = None) -> Tensor:
            with sdpa_kernel([backend]):
                return core(q, k, v, scale, causal, lengths)

    def fn() -> Tensor:
        return module(x, start, run_core)

    # Probe: one step inside the selection, so a kernel that cannot take these shapes, this
    # dtype or this device is reported now rather than replaced by another at run time.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except RuntimeError as err:
            if not any(m in str(err) for m in _NO_KERNEL_MESSAGES):
                raise
            raise UnsupportedError(_no_kernel_reason(kernel, x.device, err, caught)) from None
    detail = f"sdpa:{kernel}" if backend is not None else f"sdpa:auto->{core.chosen}" if core.chosen else "sdpa:auto"
    if core.expand_kv:
        detail += ",kv-expanded"
    return Prepared(fn=fn, detail=detail, core=run_core)
