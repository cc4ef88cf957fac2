"""Export a checkpoint to a folder that ``transformers.GPT2LMHeadModel.from_pretrained`` loads offline.

The model's math is GPT-2's (pre-norm blocks, LayerNorm eps 1e-5, scaled dot-product attention, tied head;
GELU exact → ``activation_function="gelu"``, tanh approximation → ``"gelu_new"``), so the mapping is exact: Linear weights are transposed into GPT-2's Conv1D layout,
absent biases become zeros, and a sinusoidal positional table is written into ``wpe`` as fixed values.
The tokenizer files (``tokenizer.json`` and the two small JSON files ``AutoTokenizer`` needs) are copied
beside the weights. Off a terminal, transformers' and huggingface_hub's progress bars are turned off.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import cast

import torch

from corpusforge.errors import ConfigError, require
from corpusforge.storage import commit_temp_dir, temp_path
from corpusforge.train.model import GPT, Block, sinusoidal_table
from corpusforge.train.sample import find_tokenizer, load_model

__all__ = ["export_gpt2", "gpt2_state_dict", "load_model"]


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    c = model.cfg
    zeros = lambda n: torch.zeros(n)  # noqa: E731
    sd: dict[str, torch.Tensor] = {"transformer.wte.weight": model.wte.weight.detach().clone()}
    sd["transformer.wpe.weight"] = (
        model.wpe.weight.detach().clone() if c.pos_encoding == "learned" else sinusoidal_table(c.block_size, c.n_embd)
    )
    for i, blk in enumerate(model.blocks):
        b = cast(Block, blk)
        p = f"transformer.h.{i}."

        def ln(name: str, m: torch.nn.LayerNorm, p: str = p) -> None:
            sd[p + name + ".weight"] = m.weight.detach().clone()
            sd[p + name + ".bias"] = m.bias.detach().clone() if m.bias is not None else zeros(c.n_embd)

        def lin(name: str, m: torch.nn.Linear, p: str = p) -> None:
            sd[p + name + ".weight"] = m.weight.detach().t().contiguous()  # Linear (out, in) → Conv1D (in, out)
            sd[p + name + ".bias"] = m.bias.detach().clone() if m.bias is not None else zeros(m.out_features)

        ln("ln_1", b.ln1)
        lin("attn.c_attn", b.attn.qkv)
        lin("attn.c_proj", b.attn.proj)
        ln("ln_2", b.ln2)
        lin("mlp.c_fc", b.mlp.fc)
        lin("mlp.c_proj", b.mlp.proj)
    sd["transformer.ln_f.weight"] = model.ln_f.weight.detach().clone()
    sd["transformer.ln_f.bias"] = model.ln_f.bias.detach().clone() if model.ln_f.bias is not None else zeros(c.n_embd)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def quiet_library_bars() -> None:
    """No progress bars from transformers or huggingface_hub (tqdm) when stderr is not a terminal: a bar
    redrawn with ``\r`` is noise in a cron mail or a journal. On a terminal they are left as they are."""
    if sys.stderr.isatty():
        return
    # Through the libraries' own switches, not the environment: an environment variable set here would leak into
    # every child process this one starts (a test's control load found that).
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return
    disable_progress_bars()


def export_gpt2(out_dir: Path, dest: Path, *, tokenizer_path: Path | None = None) -> Path:
    transformers = require("transformers", "hf")
    quiet_library_bars()
    model, state = load_model(out_dir)
    c = model.cfg
    tokens_dir = Path(state["tokens_dir"])
    manifest = (
        json.loads((tokens_dir / "manifest.json").read_text()) if (tokens_dir / "manifest.json").is_file() else {}
    )
    eot = int(manifest.get("eot_id", 0))
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu_new" if c.activation == "gelu_tanh" else "gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    hf = transformers.GPT2LMHeadModel(config)
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    real_missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if real_missing or unexpected:
        raise ConfigError(f"export mapping incomplete: missing {real_missing}, unexpected {unexpected}", path="export")
    dest = Path(dest)
    tmp = temp_path(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp), safe_serialization=True)
    tok = find_tokenizer(tokens_dir, tokenizer_path)
    if tok is not None:
        from corpusforge.tokens.tokenizer import hf_files

        shutil.copy(tok, tmp / "tokenizer.json")
        for name, data in hf_files(tok, model_max_length=c.block_size).items():
            (tmp / name).write_bytes(data)
    commit_temp_dir(tmp, dest)
    return dest
