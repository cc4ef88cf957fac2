"""Prefix tuning (Li & Liang 2021): per layer, P learned keys and values that every position attends to before
its own context; the model is frozen. About 2 · n_layer · P · n_embd parameters (0.1 % of a model for small P).

The attention mask with a prefix is not a plain causal flag (``model.CausalSelfAttention``): every query sees
all P prefix keys, then the causal triangle over the sequence. The prefixes are trained directly (the paper
reparameterizes them through an MLP for stability on large models; a small model trains without it), from
N(0, 0.02²) as the model's own weights; with P = 0 the model is the base model exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PrefixKV(nn.Module):
    def __init__(self, *, n_layer: int, n_head: int, n_embd: int, n_tokens: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # (layers, 2: key and value, heads, P, head width)
        self.kv = nn.Parameter(torch.randn(n_layer, 2, n_head, n_tokens, n_embd // n_head, generator=g) * 0.02)

    def forward(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v), each (1, H, P, D): broadcast over the batch by the attention."""
        return [(self.kv[i, 0][None], self.kv[i, 1][None]) for i in range(self.kv.size(0))]
