"""Load a trained GPT from a checkpoint folder and generate text with temperature and top-k sampling.

The tokenizer is found in this order: an explicit path, the ``tokenizer_path`` recorded in the tokens
manifest, ``<run>/tokenizer/tokenizer.json`` beside the tokens folder, ``tokenizer.json`` inside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from corpusforge.errors import ConfigError
from corpusforge.train import checkpoint as ckpt
from corpusforge.train.model import GPT, GPTConfig


def load_model(out_dir: Path, device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The newest good checkpoint in ``out_dir/checkpoints`` (or ``out_dir`` itself) as an eval-mode GPT."""
    out_dir = Path(out_dir)
    folder = out_dir / "checkpoints" if (out_dir / "checkpoints").is_dir() else out_dir
    if folder.name.startswith(ckpt.PREFIX) and (folder / "state.json").is_file():
        loaded: ckpt.Loaded | None = ckpt.load_one(folder)  # a single checkpoint folder
    else:
        loaded = ckpt.load_latest(folder)
    if loaded is None:
        raise ConfigError(f"no loadable checkpoint in {folder}", path="CKPT_DIR")
    model = GPT(GPTConfig.from_dict(loaded.state["model"]))
    model.load_state_dict(loaded.model, strict=False)  # lm_head.weight is tied to wte.weight, not stored
    return model.to(device).eval(), loaded.state


def _manifest(tokens_dir: Path) -> dict[str, Any]:
    path = Path(tokens_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def find_tokenizer(tokens_dir: Path, tokenizer_path: Path | None = None) -> Path | None:
    if tokenizer_path is not None:
        if not Path(tokenizer_path).is_file():
            raise ConfigError(f"{tokenizer_path} not found", path="tokenizer")
        return Path(tokenizer_path)
    for cand in (
        _manifest(tokens_dir).get("tokenizer_path"),
        Path(tokens_dir).parent / "tokenizer" / "tokenizer.json",
        Path(tokens_dir) / "tokenizer.json",
    ):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def sample_text(
    model: GPT,
    tokens_dir: Path,
    n: int,
    *,
    device: str = "cpu",
    seed: int = 0,
    prompt: str = "",
    temperature: float = 0.8,
    top_k: int | None = 50,
    tokenizer_path: Path | None = None,
) -> str:
    """Continue ``prompt`` (or the end-of-text token) by ``n`` tokens; decoded text, or ids without a tokenizer."""
    from tokenizers import Tokenizer

    path = find_tokenizer(tokens_dir, tokenizer_path)
    tok = Tokenizer.from_file(str(path)) if path else None
    start = tok.encode(prompt).ids if (tok and prompt) else [int(_manifest(tokens_dir).get("eot_id", 0))]
    g = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = model.generate(torch.tensor([start], device=device), n, temperature=temperature, top_k=top_k, generator=g)
    ids = out[0].tolist()
    return tok.decode(ids, skip_special_tokens=True) if tok else " ".join(map(str, ids))
