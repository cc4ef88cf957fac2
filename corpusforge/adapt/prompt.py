"""Prompt tuning (Lester et al. 2021): P learned input embeddings placed before every sequence; the model is
frozen. They start as the embeddings of P tokens drawn from the vocabulary (the paper's "sampled vocabulary"
initialization), and take the first P positions, so a sequence holds at most block_size - P tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SoftPrompt(nn.Module):
    def __init__(self, wte: nn.Embedding, n_tokens: int, *, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, wte.num_embeddings, (n_tokens,), generator=g)
        self.embeds = nn.Parameter(wte.weight.detach()[ids].clone())  # (P, C)

    def forward(self) -> torch.Tensor:
        return self.embeds[None]  # (1, P, C), broadcast over the batch
