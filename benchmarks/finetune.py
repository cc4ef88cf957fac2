"""Adapting one trained GPT to one synthetic task by full fine-tuning, LoRA (also on an NF4 base), prompt tuning and
prefix tuning; HF peft's LoRA on the exported ``GPT2LMHeadModel`` on the same data in the same run.

The base model is trained here on a small grammar (4 layers, width 128, block 64; ~1 minute). The task: after
a sentence's first words and "Question:", answer a fixed phrase the corpus never holds, the loss on the
answer only. Every method trains the same iterations on the same batches; per method: trainable parameters,
ms per step, frozen weight memory, validation loss before and after. peft runs with the same rank, alpha,
targets (the attention's qkv and output projections, the MLP's two layers: GPT-2's c_attn, attn.c_proj, c_fc,
mlp.c_proj), learning rate, schedule and batches, for each seed.

    pip install 'corpusforge[peft]'
    python benchmarks/finetune.py            # 300 iterations per method, 2 seeds for LoRA and peft
    python benchmarks/finetune.py --quick    # 60 iterations, 1 seed

Last line: ``lora_params_share=<x> lora_step_over_peft=<ratio> methods_ok=<methods that lowered the loss>``.
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/tokenize.py shadows tokenize
sys.path.insert(0, str(_HERE.parent))

from benchmarks._harness import parser, print_keyvals, print_table  # noqa: E402

SUBJ = "the cat|a dog|the old man|my sister|the teacher|a small bird|the farmer|our neighbour".split("|")
VERB = "sees|likes|finds|carries|paints|follows|remembers|watches".split("|")
OBJ = "the red ball|a wooden box|the river|an apple|the garden gate|a long letter|the blue car|her hat".split("|")
ADV = "today|slowly|every morning|in the rain|without a word|after dinner".split("|")
ANSWER = " Answer: zebra crossing at noon."


def sentences(rng: random.Random, n: int) -> str:
    return " ".join(
        f"{rng.choice(SUBJ).capitalize()} {rng.choice(VERB)} {rng.choice(OBJ)} {rng.choice(ADV)}." for _ in range(n)
    )


def base_model(d: Path, iters: int) -> Path:
    from corpusforge.errors import DONE
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    rng = random.Random(1)
    with (d / "corpus.jsonl").open("w") as f:
        for i in range(2000):
            f.write(json.dumps({"id": str(i), "text": sentences(rng, 12)}) + "\n")
    raw = {
        "name": "base",
        "workdir": str(d / "run"),
        "stages": [
            {"kind": "read_jsonl", "name": "input", "path": str(d / "corpus.jsonl")},
            {"kind": "tokenizer", "vocab_size": 512},
            {"kind": "tokens", "input": "input", "val_fraction": 0.05},
            {
                "kind": "train",
                "n_layer": 4,
                "n_head": 4,
                "n_embd": 128,
                "block_size": 64,
                "batch_size": 16,
                "max_iters": iters,
                "eval_interval": iters,
                "sample_tokens": 0,
                "dtype": "float32",
            },
        ],
    }
    assert run_recipe(validate_recipe(raw)).status == DONE
    return d / "run" / "train"


def task(d: Path) -> Path:
    rng = random.Random(9)
    path = d / "task.jsonl"
    with path.open("w") as f:
        for _ in range(400):
            words = sentences(rng, 1).split()[:6]
            f.write(json.dumps({"prompt": " ".join(words) + " Question:", "response": ANSWER}) + "\n")
    return path


def peft_run(base_dir: Path, data: Path, d: Path, *, iters: int, seed: int, lr: float) -> dict[str, float]:
    """peft's LoRA on the exported GPT2LMHeadModel: the same rows, batches (sampler), schedule and clipping."""
    import numpy as np
    import peft
    import torch
    import transformers

    from corpusforge.adapt.data import Encoder, load_rows, sft_data
    from corpusforge.adapt.finetune import FinetuneConfig, _lr
    from corpusforge.train.export import export_gpt2
    from corpusforge.train.sample import find_tokenizer, load_model

    _, state = load_model(base_dir)
    hf_dir = d / "hf"
    if not hf_dir.is_dir():
        export_gpt2(base_dir, hf_dir)
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir))
    cfg = peft.LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        bias="none",
    )
    model = peft.get_peft_model(hf, cfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    enc = Encoder(find_tokenizer(Path(state["tokens_dir"])))
    data_ = sft_data(load_rows(data), enc, hf.config.n_positions, 0.1, str(data))
    train_rows, val_rows = np.flatnonzero(~data_.val), np.flatnonzero(data_.val)
    fcfg = FinetuneConfig(method="lora", max_iters=iters, seed=seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        x, y = torch.from_numpy(data_.x[rows]), torch.from_numpy(data_.y[rows])
        logits = model(input_ids=x).logits
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    def val() -> float:
        model.eval()
        with torch.no_grad():
            total = count = 0.0
            for i in range(0, len(val_rows), 32):
                rows = val_rows[i : i + 32]
                n = int((data_.y[rows] != -100).sum())
                total, count = total + float(loss_of(rows)) * n, count + n
        model.train()
        return total / count

    first = val()
    model.train()
    times = []
    for it in range(iters):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = _lr(fcfg, it, lr)
        loss = loss_of(rng.choice(train_rows, size=fcfg.batch_size))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    base_params = sum(p.numel() for p in hf.parameters()) - n_train  # hf now holds the LoRA layers too
    return {
        "params": n_train,
        "share": n_train / base_params,
        "step_s": float(np.median(times)),
        "first": first,
        "last": val(),
    }


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    args = p.parse_args()
    iters = 60 if args.quick else 300
    seeds = [1] if args.quick else [1, 2]
    from corpusforge.adapt.finetune import DEFAULT_LR, FinetuneConfig, finetune

    d = Path(tempfile.mkdtemp(prefix="cf-finetune-"))
    t0 = time.perf_counter()
    base = base_model(d, 150 if args.quick else 600)
    print(f"base model trained in {time.perf_counter() - t0:.0f} s")
    data = task(d)
    rows: list[dict] = []
    # Our LoRA and peft's alternate seed by seed, so a drifting shared machine touches both alike.
    runs = [("full", "none", 1), ("lora", "nf4", 1), ("prompt", "none", 1), ("prefix", "none", 1)]
    runs += [("lora", "none", s) for s in seeds]
    try:
        import peft  # noqa: F401

        have_peft = True
    except ImportError:
        have_peft = False
        print("peft is not installed (pip install 'corpusforge[peft]'): no peer in this run")
    peer: list[dict] = []
    ours: dict[str, list[dict]] = {}
    for method, quant, seed in runs:
        cfg = FinetuneConfig(method=method, quantize=quant, max_iters=iters, eval_interval=iters, seed=seed)
        t = time.perf_counter()
        r = finetune(base, data, d / f"{method}-{quant}-{seed}", cfg, quiet=True)
        wall = time.perf_counter() - t
        name = method + (" (NF4 base)" if quant == "nf4" else "") + (f" seed {seed}" if method == "lora" else "")
        ours.setdefault(f"{method}-{quant}", []).append(r)
        first, last = r["first_eval"]["val_loss"], r["final_eval"]["val_loss"]
        rows.append(
            {
                "method": name,
                "trainable": f"{r['trainable_params']:,} ({r['trainable_share']:.3%})",
                "ms/step": round(r["step_s"] * 1000, 1),
                "wall s": round(wall, 1),
                "frozen MiB": round(r["frozen_weight_bytes"] / 2**20, 2),
                "val loss": f"{first:.3f} → {last:.3f}",
            }
        )
        if method == "lora" and quant == "none" and have_peft:
            pr = peft_run(base, data, d, iters=iters, seed=seed, lr=DEFAULT_LR["lora"])
            peer.append(pr)
            rows.append(
                {
                    "method": f"peft LoRA seed {seed}",
                    "trainable": f"{pr['params']:,} ({pr['share']:.3%})",
                    "ms/step": round(pr["step_s"] * 1000, 1),
                    "wall s": "-",
                    "frozen MiB": "-",
                    "val loss": f"{pr['first']:.3f} → {pr['last']:.3f}",
                }
            )
    ok = len(
        {
            k.split("-")[0]
            for k, rs in ours.items()
            if all(x["final_eval"]["val_loss"] < x["first_eval"]["val_loss"] for x in rs)
        }
    )
    print_table(rows, title=f"adapting one GPT to one task, {iters} iterations each (batch 8)")
    lora = ours["lora-none"]
    ratio = (
        (sum(r["step_s"] for r in lora) / len(lora)) / (sum(x["step_s"] for x in peer) / len(peer))
        if peer
        else math.nan
    )
    if peer:
        ours_loss = [r["final_eval"]["val_loss"] for r in lora]
        print(f"final val loss, LoRA: ours {ours_loss}, peft {[round(x['last'], 4) for x in peer]}")
    print_keyvals(
        lora_params_share=round(lora[0]["trainable_share"], 5), lora_step_over_peft=round(ratio, 3), methods_ok=ok
    )


if __name__ == "__main__":
    main()
