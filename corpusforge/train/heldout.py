"""Held-out bits per byte: every token of a held-out document set scored by the model, over its UTF-8 bytes.

Bits per byte do not depend on the tokenizer (a tokenizer that cuts text into more tokens gives each a lower
loss), so models trained on different corpora are compared on the same text in the same unit. The held-out
documents are tokenized exactly as the tokens stage does (``tokens.write``: the same encoder, an end-of-text
token after each document) and laid end to end. The stream is cut into windows of ``block_size + 1`` tokens
that overlap by one, so every token after the first is predicted once, with up to ``block_size - 1`` tokens
of context before it; the end-of-text tokens are predicted too (a model must learn where documents end).

bits/byte = Σ −ln p(token) / ln 2 / Σ len(text.encode("utf-8")).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from corpusforge.errors import ConfigError
from corpusforge.storage import MANIFEST, iter_documents, manifest_paths, sha256_file
from corpusforge.train.precision import autocast


def load_texts(folder: Path) -> list[str]:
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ConfigError(
            f"held-out set {str(folder)!r} is not a finished document folder (no {MANIFEST})", path="heldout"
        )
    texts = [d.text for d in iter_documents(manifest_paths(folder), columns=["id", "text"]) if d.text]
    if not texts:
        raise ConfigError(f"held-out set {str(folder)!r} holds no text", path="heldout")
    return texts


class HeldoutSet:
    """The held-out token stream of ``folder`` (a document folder) under the tokenizer at ``tokenizer_path``."""

    def __init__(
        self, folder: Path, tokenizer_path: Path, block_size: int, tokenizer_sha256: str | None = None
    ) -> None:
        """``tokenizer_sha256``: the digest the training tokens' manifest records; a tokenizer file that no longer
        matches it is refused (the held-out text would be cut unlike the training text)."""
        from corpusforge.tokens.encode import FastBpeEncoder, encode_texts
        from corpusforge.tokens.write import EOT, load_tokenizer, with_eot

        tokenizer_path = Path(tokenizer_path)
        if not tokenizer_path.is_file():
            raise ConfigError(
                f"the tokenizer {str(tokenizer_path)!r} of the training tokens is gone: the held-out set cannot be "
                "tokenized like them; rebuild the tokens stage",
                path="heldout",
            )
        if tokenizer_sha256 and sha256_file(tokenizer_path) != tokenizer_sha256:
            raise ConfigError(
                f"the tokenizer {str(tokenizer_path)!r} changed since the training tokens were written with it "
                f"(manifest sha256 {tokenizer_sha256[:12]}…): the held-out set would be tokenized unlike them; "
                "rebuild the tokens stage",
                path="heldout",
            )
        texts = load_texts(folder)
        tok = load_tokenizer(tokenizer_path)
        eot = tok.token_to_id(EOT)
        flat, lengths = encode_texts(FastBpeEncoder(tok), texts)
        stream, _ = with_eot(flat, lengths, eot, np.dtype(np.int64))
        self.documents = len(texts)
        self.bytes = sum(len(t.encode("utf-8")) for t in texts)
        self.tokens = int(stream.size)
        if self.tokens < 2:
            raise ConfigError(f"held-out set {str(folder)!r} is shorter than two tokens", path="heldout")
        self.stream = torch.from_numpy(stream)
        self.block_size = block_size

    def windows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) pairs: full windows stacked (n, block_size), then the shorter last one (1, t) if any."""
        b, s = self.block_size, self.stream
        full = (self.tokens - 1) // b
        out = []
        if full:
            x = s[: full * b].view(full, b)
            y = s[1 : full * b + 1].view(full, b)
            out.append((x, y))
        rest = self.tokens - 1 - full * b
        if rest:
            out.append((s[full * b : full * b + rest].view(1, rest), s[full * b + 1 :].view(1, rest)))
        return out

    @torch.no_grad()
    def bits_per_byte(
        self, model: torch.nn.Module, device: str, amp: torch.dtype | None = None, batch: int = 32
    ) -> float:
        was_training = model.training
        model.eval()
        nats = 0.0
        for x, y in self.windows():
            for i in range(0, x.size(0), batch):
                xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
                with autocast(device, amp):
                    logits, _ = model(xb, yb)
                nats += float(
                    F.cross_entropy(logits.float().view(-1, logits.size(-1)), yb.reshape(-1), reduction="sum")
                )
        model.train(was_training)
        return nats / math.log(2) / self.bytes
