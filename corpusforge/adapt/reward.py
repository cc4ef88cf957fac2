"""A reward model (InstructGPT, Ouyang et al. 2022): the GPT with a scalar head on its last token's hidden state,
trained on ranked completions with loss = −E[log σ(r(x, y_w) − r(x, y_l))] over all K-choose-2 pairs of a
prompt. A prompt is one batch element: its K completions get one forward pass each, and every pair is formed
from those K rewards (not K(K-1)/2 separate passes, which also overfit in the paper).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from corpusforge.train.model import GPT


class RewardModel(nn.Module):
    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.cfg.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """idx (N, T), last (N,) index of each sequence's last real token → rewards (N,)."""
        h = self.gpt.hidden(idx)  # (N, T, C)
        return self.head(h[torch.arange(idx.size(0)), last]).squeeze(-1)


def pairwise_loss(rewards: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (B, K) with completions best first, valid (B, K) → (mean −log σ(r_i − r_j) over pairs i < j of
    valid completions, the fraction of those pairs ordered right)."""
    K = rewards.size(1)
    i, j = torch.triu_indices(K, K, offset=1)
    diff = rewards[:, i] - rewards[:, j]  # (B, pairs): better minus worse
    ok = valid[:, i] & valid[:, j]
    loss = -(F.logsigmoid(diff) * ok).sum() / ok.sum().clamp_min(1)
    acc = ((diff > 0) & ok).sum() / ok.sum().clamp_min(1)
    return loss, acc
