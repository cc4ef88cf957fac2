"""Random training windows from memory-mapped token shards.

``TokenData`` holds zero-copy views of each shard's flat token stream (``corpusforge.shards.token_arrays``)
and draws windows of ``block_size + 1`` tokens: a shard (record batch) is picked with probability
proportional to its length, then a uniform start inside it. The sampler's state (a numpy PCG64 generator)
is the data cursor that checkpoints save, so a resumed run draws exactly the batches a straight run would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corpusforge.errors import ConfigError


class TokenData:
    def __init__(self, tokens_dir: Path, split: str, block_size: int, seed: int, *, verify: bool = False) -> None:
        from corpusforge.tokens.read import token_arrays

        # verify: the checksum of every shard against the manifest before training reads a token (one pass).
        self.arrays = [a for a in token_arrays(tokens_dir, split, verify=verify) if len(a) > block_size + 1]
        if not self.arrays:
            raise ConfigError(
                f"{tokens_dir}: the {split!r} split has no shard longer than block_size + 1 = {block_size + 1} "
                "tokens; lower block_size or add data",
                path="block_size",
            )
        self.block_size = block_size
        lengths = np.array([len(a) - block_size - 1 for a in self.arrays], dtype=np.float64)
        self.p = lengths / lengths.sum()
        self.tokens = int(sum(len(a) for a in self.arrays))
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def batch(self, batch_size: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch_size, block_size) int64, y shifted by one token."""
        which = self.rng.choice(len(self.arrays), size=batch_size, p=self.p)
        starts = (
            self.rng.random(batch_size) * (np.array([len(self.arrays[w]) for w in which]) - self.block_size - 1)
        ).astype(np.int64)
        span = np.arange(self.block_size + 1)
        if len(self.arrays) == 1:  # one gather from the memory map: (batch, block_size + 1)
            rows = self.arrays[0][starts[:, None] + span]
        else:
            rows = np.stack([self.arrays[w][s + span] for w, s in zip(which, starts, strict=True)])
        t = torch.from_numpy(rows.astype(np.int64))
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if device != "cpu":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    def state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def data_fingerprint(tokens_dir: Path) -> str:
    """Hash of the shard list (names and sha256) in the tokens manifest: changes when the data changes."""
    manifest = json.loads((Path(tokens_dir) / "manifest.json").read_text())
    blob = json.dumps([(f["name"], f["sha256"]) for f in manifest["files"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bytes_per_token(tokens_dir: Path) -> float | None:
    """Bytes of original text per token (for bits per byte): the tokenizer's report.json, else the manifest's."""
    manifest = json.loads((Path(tokens_dir) / "manifest.json").read_text())
    tok = manifest.get("tokenizer_path")
    if tok:
        report = Path(tok).parent / "report.json"
        if report.is_file():
            return float(json.loads(report.read_text())["overall"].get("bytes_per_token") or 0) or None
    return manifest.get("bytes_per_token")
