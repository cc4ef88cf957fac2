"""A frozen linear layer stored as blockwise 4-bit NormalFloat (QLoRA, Dettmers et al. 2023), for LoRA on a
quantized base.

NF4's 16 levels are quantiles of a standard normal scaled to [-1, 1], with an exact zero: 8 from the positive
half and 7 from the negative (computed here with ``torch.special.ndtri``). Each block of ``BLOCK`` = 64 weights
is scaled by its absolute maximum and every weight becomes the index of its nearest level; two indices share
a byte. Storage: 0.5 byte per weight plus a float32 scale per block (0.5625 B against float32's 4). The
constants are not quantized again (QLoRA's double quantization, 0.127 B per weight saved, is left out).

On the CPU there is no 4-bit matmul kernel: each forward pass dequantizes the weight (a table lookup and a
multiply) and runs a float32 matmul, so it saves memory, not time.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

BLOCK = 64
_OFFSET = 0.9677  # the outermost quantile, so the largest level is not at infinity (QLoRA's choice of range)


def nf4_levels() -> torch.Tensor:
    pos = torch.special.ndtri(torch.linspace(0.5, _OFFSET, 9, dtype=torch.float64))[1:]
    neg = -torch.special.ndtri(torch.linspace(0.5, _OFFSET, 8, dtype=torch.float64))[1:]
    levels = torch.cat((neg, torch.zeros(1, dtype=torch.float64), pos))
    return (levels / levels.abs().max()).sort().values.float()  # 16 values, -1 … 1, one of them 0


class NF4Linear(nn.Module):
    """``nn.Linear`` with its weight in NF4 (frozen; the bias stays float32)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.out_features, self.in_features = w.shape
        flat = w.reshape(-1)
        pad = (-flat.numel()) % BLOCK
        blocks = torch.cat((flat, flat.new_zeros(pad))).view(-1, BLOCK)
        absmax = blocks.abs().amax(1).clamp_min(1e-12)
        levels = nf4_levels()
        mids = (levels[1:] + levels[:-1]) / 2
        codes = torch.bucketize(blocks / absmax[:, None], mids).to(torch.uint8).reshape(-1)
        self.register_buffer("packed", (codes[0::2] << 4) | codes[1::2])  # (n / 2,) uint8
        self.register_buffer("absmax", absmax)  # (n / BLOCK,) float32
        self.register_buffer("levels", levels)
        self.numel = flat.numel()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    packed: torch.Tensor
    absmax: torch.Tensor
    levels: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        codes = torch.stack((self.packed >> 4, self.packed & 0xF), 1).reshape(-1).long()
        w = (self.levels[codes].view(-1, BLOCK) * self.absmax[:, None]).reshape(-1)[: self.numel]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def nbytes(self) -> int:
        return int(self.packed.numel() + self.absmax.numel() * 4)  # + the 16 levels, shared in spirit


def quantize_linears(model: nn.Module, *, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every ``nn.Linear`` in the transformer blocks by an ``NF4Linear`` (in place); bytes of weight kept."""
    total = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name not in skip:
            *up, leaf = name.split(".")
            parent = model
            for part in up:
                parent = getattr(parent, part)
            q = NF4Linear(m)
            setattr(parent, leaf, q)
            total += q.nbytes()
    return total
