"""The small building blocks the variants share: a bias-free projection and RMSNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (DeepSeek/Llama do the same), parameter named `weight`."""

    def __init__(self, dim: int, eps: float, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def linear(d_in: int, d_out: int, device: torch.device | None, dtype: torch.dtype | None) -> nn.Linear:
    """Bias-free projection, weight [out, in] as in the checkpoints."""
    return nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype)
