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
        return self.head(h[torch.arange(idx.size(0), device=idx.device), last]).squeeze(-1)


def pairwise_loss(rewards: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (B, K) with completions best first, valid (B, K) → (loss, the fraction of pairs ordered right).

    The loss is the paper's: per prompt, the mean of −log σ(r_i − r_j) over its C(K_b, 2) pairs i < j of valid
    completions, then the mean over prompts, so a prompt with many completions weighs as much as one with two
    (a mean over all pairs of the batch would weigh it by its K_b(K_b − 1)/2). The accuracy is over all pairs."""
    K = rewards.size(1)
    i, j = torch.triu_indices(K, K, offset=1, device=rewards.device)
    diff = rewards[:, i] - rewards[:, j]  # (B, pairs): better minus worse
    ok = valid[:, i] & valid[:, j]
    pairs = ok.sum(1)  # (B,) C(K_b, 2)
    has = pairs > 0
    per_prompt = -(F.logsigmoid(diff) * ok).sum(1) / pairs.clamp_min(1)
    loss = (per_prompt * has).sum() / has.sum().clamp_min(1)
    acc = ((diff > 0) & ok).sum() / ok.sum().clamp_min(1)
    return loss, acc
