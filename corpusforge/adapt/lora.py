"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update, y = W x + (α / r) · B A x.

A: (r, in) from Kaiming-uniform, B: (out, r) zeros, so training starts from the base model exactly. ``targets``
name layers by the end of their module path: the attention's ``attn.qkv`` and ``attn.proj``, the MLP's
``mlp.fc`` and ``mlp.proj`` (all four by default). Only A and B train; ``merge`` folds B A into W, leaving a plain
GPT that exports to ``transformers`` like any other.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn
from torch.nn import functional as F

from corpusforge.errors import ConfigError

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
# Below this many weights a layer's forward folds B A into W first (one matmul over the tokens instead of three):
# on a 2-core CPU, for the 4-layer width-128 benchmark model, 49 ms per step against 62 ms for the low-rank path
# (and peft's 61 ms), because small matmuls cost their launch more than their arithmetic. For large layers the
# low-rank path wins: the fold costs a full (out, in) weight gradient per step.
MERGE_MAX_WEIGHTS = 1 << 20


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, *, r: int, alpha: float, dropout: float, fold: bool | None = None) -> None:
        super().__init__()
        self.base = base  # nn.Linear, or nf4.NF4Linear
        in_f, out_f = int(base.in_features), int(base.out_features)  # type: ignore[arg-type]
        self.lora_a = nn.Parameter(torch.empty(r, in_f))
        self.lora_b = nn.Parameter(torch.zeros(out_f, r))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / r
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Fold (see MERGE_MAX_WEIGHTS): the same function, computed as (W + (α / r) B A) x; not with dropout,
        # which applies to the low-rank branch's input only.
        self.fold = (dropout == 0 and in_f * out_f <= MERGE_MAX_WEIGHTS) if fold is None else (fold and dropout == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold and isinstance(self.base, nn.Linear):
            return F.linear(
                x, torch.addmm(self.base.weight, self.lora_b, self.lora_a, alpha=self.scale), self.base.bias
            )
        # (B, T, in) → (B, T, r) → (B, T, out): two thin matmuls, never the (out, in) product B A.
        return self.base(x) + F.linear(F.linear(self.drop(x), self.lora_a), self.lora_b) * self.scale

    def merged_weight(self) -> torch.Tensor:
        w = self.base.weight if isinstance(self.base, nn.Linear) else self.base.dequantize()  # type: ignore[operator]
        return w + (self.lora_b @ self.lora_a) * self.scale


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *up, leaf = path.split(".")
    mod = model
    for part in up:
        mod = getattr(mod, part)
    return mod, leaf


def apply_lora(
    model: nn.Module, *, r: int, alpha: float, dropout: float, targets: tuple[str, ...] = TARGETS
) -> list[str]:
    """Freeze every parameter of ``model`` and wrap the targeted linear layers; the wrapped layers' paths."""
    for p in model.parameters():
        p.requires_grad_(False)
    from corpusforge.adapt.nf4 import NF4Linear

    chosen = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | NF4Linear) and any(name.endswith(t) for t in targets) and name != "lm_head"
    ]
    if not chosen:
        raise ConfigError(
            f"no linear layer matches {', '.join(targets)}; targets: {', '.join(TARGETS)}", path="lora_targets"
        )
    for name in chosen:
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), r=r, alpha=alpha, dropout=dropout))
    return chosen


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by an ``nn.Linear`` holding W + (α / r) B A (in place); the model."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            w = m.merged_weight().detach()
            lin = nn.Linear(w.size(1), w.size(0), bias=getattr(m.base, "bias", None) is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if lin.bias is not None:
                    lin.bias.copy_(cast(torch.Tensor, m.base.bias))
            parent, leaf = _parent(model, name)
            setattr(parent, leaf, lin)
    return model
