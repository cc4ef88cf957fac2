"""A decoder-only transformer (GPT), readable in one sitting.

token embedding + positional encoding (learned, or the fixed sinusoidal table of Vaswani et al. 2017)
→ n_layer × [LayerNorm → causal multi-head self-attention → residual, LayerNorm → MLP (4× width, GELU) →
residual] → final LayerNorm → output head tied to the token embedding.

Shapes: B = batch, T = sequence length (≤ block_size), C = n_embd, H = n_head, D = C / H.
The math is GPT-2's (pre-norm blocks, LayerNorm eps 1e-5, tied head; GELU exact as in nanoGPT, or with
GPT-2's tanh approximation), so every config exports to ``transformers.GPT2LMHeadModel`` exactly (export.py):
absent biases are zeros there, and a sinusoidal table is written into GPT-2's learned position table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# On the CPU, for short sequences, SDPA's math backend (batched matmuls and a softmax) beats its flash kernel,
# whose backward is slow in bf16: 26 vs 34 ms per training step of the 4×128 benchmark model at T = 64 under
# bf16 autocast, equal in float32. From about T = 256 the flash kernel is faster (97 vs 111 ms).
MATH_ATTENTION_MAX_T = 128


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 has them; nanoGPT's small configs don't)
    pos_encoding: Literal["learned", "sinusoidal"] = "learned"
    # "gelu": exact erf GELU (nanoGPT; faster on CPU); "gelu_tanh": GPT-2's tanh approximation ("gelu_new").
    activation: Literal["gelu", "gelu_tanh"] = "gelu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        # Checkpoints written before ``activation`` existed used the tanh approximation.
        return cls(**({"activation": "gelu_tanh"} | d))


def dropout(p: float) -> nn.Module:
    """nn.Dropout, or nothing at all when p = 0 (saves a pass over the activations)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def sinusoidal_table(block_size: int, n_embd: int) -> torch.Tensor:
    """(block_size, n_embd): sin on even channels, cos on odd, wavelengths from 2π to 10000·2π."""
    pos = torch.arange(block_size, dtype=torch.float32)[:, None]
    i = torch.arange(0, n_embd, 2, dtype=torch.float32)[None, :]
    angle = pos / torch.pow(10000.0, i / n_embd)
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : n_embd // 2])
    return table


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) → (B, H, T, D)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if prefix is not None:  # even of length 0: then the mask is the causal one (a test compares the two)
            # Prefix tuning: P learned keys and values before the sequence's own, (B, H, P, D) each. Every query
            # sees all P of them, and its own position and those before it: the mask is [ones(T, P) | causal(T)],
            # which is_causal=True (a square lower triangle over P + T keys) would get wrong.
            pk, pv = prefix
            P = pk.size(2)
            k, v = torch.cat((pk.expand(B, -1, -1, -1), k), 2), torch.cat((pv.expand(B, -1, -1, -1), v), 2)
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        elif x.device.type == "cpu" and T <= MATH_ATTENTION_MAX_T:
            with sdpa_kernel(SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.drop = dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) → (B, T, 4C) → (B, T, C)
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), prefix)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos_encoding == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        self.drop = dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one (vocab, C) matrix
        self.apply(self._init)
        # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 · n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - (self.wpe.weight.numel() if self.cfg.pos_encoding == "learned" else 0)

    def hidden(
        self,
        idx: torch.Tensor,
        *,
        prompt: torch.Tensor | None = None,
        prefixes: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) → the final LayerNorm's output (B, T, C) at the token positions.

        ``prompt`` (1 or B, P, C): soft-prompt embeddings placed before the tokens (prompt tuning; they take
        positions 0..P-1, the tokens P..P+T-1). ``prefixes``: per layer, prefix keys and values (prefix tuning).
        """
        B, T = idx.shape
        P = 0 if prompt is None else prompt.size(1)
        assert P + T <= self.cfg.block_size, f"sequence of {P + T} tokens exceeds block_size {self.cfg.block_size}"
        if self.cfg.pos_encoding == "learned":
            pos = self.wpe(torch.arange(P + T, device=idx.device))
        else:
            pos = cast(torch.Tensor, self.pos_table)[: P + T]  # a registered buffer
        tok = self.wte(idx)
        if prompt is not None:
            tok = torch.cat((prompt.expand(B, -1, -1).to(tok.dtype), tok), 1)
        x = self.drop(tok + pos)
        for i, block in enumerate(self.blocks):
            x = block(x, prefixes[i] if prefixes is not None else None)
        return self.ln_f(x)[:, P:]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        prompt: torch.Tensor | None = None,
        prefixes: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 → logits (B, T, vocab); loss = mean cross-entropy when targets (B, T) are given
        (positions whose target is -100 are left out: the prompt of a prompt/response pair)."""
        x = self.hidden(idx, prompt=prompt, prefixes=prefixes)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # only the last position is needed to sample
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on matrices (Linear, Embedding weights); none on biases and LayerNorm gains."""
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6·N + 12·L·C·T (PaLM appendix B)."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.cfg.block_size :]
            logits, _ = self(ctx)
            logits = logits[:, -1, :] / max(temperature, 1e-6)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
