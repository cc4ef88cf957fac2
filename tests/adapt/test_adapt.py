"""Fine-tuning the bundled GPT: frozen weights untouched, LoRA merge and export, prefix masks, each method
learning a task the base model cannot do, the reward model's planted preference, exact resume after kill -9."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from corpusforge.adapt.data import load_rows, rank_data  # noqa: E402
from corpusforge.adapt.finetune import FinetuneConfig, finetune, load_adapted, merge, score, train_reward  # noqa: E402
from corpusforge.errors import DONE, ConfigError  # noqa: E402
from corpusforge.recipe import validate_recipe  # noqa: E402
from corpusforge.runner import run_recipe  # noqa: E402
from tests.conftest import cli_env  # noqa: E402
from tests.test_ablate import corpus, write_jsonl  # noqa: E402

TASK = "Answer: zebra crossing at noon."  # never in the base model's corpus


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny GPT trained on a small grammar (tokenizer, token shards and model through a recipe)."""
    d = tmp_path_factory.mktemp("adapt")
    write_jsonl(d / "corpus.jsonl", corpus(1, 400))
    raw = {
        "name": "base",
        "workdir": str(d / "run"),
        "stages": [
            {"kind": "read_jsonl", "name": "input", "path": str(d / "corpus.jsonl")},
            {"kind": "tokenizer", "vocab_size": 400},
            {"kind": "tokens", "input": "input", "val_fraction": 0.1},
            {
                "kind": "train",
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 32,
                "block_size": 48,
                "batch_size": 16,
                "max_iters": 150,
                "eval_interval": 150,
                "sample_tokens": 0,
                "dtype": "float32",
            },
        ],
    }
    assert run_recipe(validate_recipe(raw)).status == DONE
    rng = random.Random(4)
    rows = [{"prompt": " ".join(s.split()[:8]) + " Question:", "response": " " + TASK} for s in corpus(9, 120)]
    rng.shuffle(rows)
    with (d / "task.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return d, d / "run" / "train"


def frozen_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CFG = {"max_iters": 150, "eval_interval": 75, "batch_size": 8, "warmup_iters": 5}


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix", "full"])
def test_each_method_learns_the_task(base, method):
    d, ckpt_dir = base
    cfg = FinetuneConfig(method=method, **CFG, virtual_tokens=8, prefix_tokens=8)
    report = finetune(ckpt_dir, d / "task.jsonl", d / f"ft-{method}", cfg, quiet=True)
    first, last = report["first_eval"]["val_loss"], report["final_eval"]["val_loss"]
    # A frozen 2-layer, width-32 model barely listens to a soft prompt at its first positions (scaling the prompt
    # 50× moves the loss by 1 %): prompt tuning lowers the loss least, as Lester et al. found for small models.
    assert last < {"lora": 0.5, "full": 0.5, "prefix": 0.8, "prompt": 0.97}[method] * first, (method, first, last)
    share = report["trainable_share"]
    assert (share == 1.0) if method == "full" else (0 < share < 0.5)


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_frozen_weights_are_bit_identical(base, method):
    d, ckpt_dir = base
    from corpusforge.adapt.finetune import base_checkpoint, load_base

    before = frozen_state(load_base(base_checkpoint(ckpt_dir)))
    out = d / f"frozen-{method}"
    finetune(ckpt_dir, d / "task.jsonl", out, FinetuneConfig(method=method, max_iters=10, eval_interval=10), quiet=True)
    model, _, _ = load_adapted(out)
    after = model.state_dict()
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".base.weight")  # LoRA wraps the layer it adapts
        assert torch.equal(after[key], v), k
    from safetensors.torch import load_file

    ck = sorted((out / "checkpoints").iterdir())[-1]
    names = set(load_file(str(ck / "model.safetensors")))
    assert names and all(("lora_" in n) or n.startswith(("prompt.", "prefix.")) for n in names)


def test_merged_lora_equals_runtime_adapter_and_exports(base, tmp_path):
    d, ckpt_dir = base
    out = d / "ft-lora"  # made by test_each_method_learns_the_task, or now
    if not (out / "adapter.json").is_file():
        finetune(ckpt_dir, d / "task.jsonl", out, FinetuneConfig(method="lora", **CFG), quiet=True)
    model, _, _ = load_adapted(out)
    x = torch.randint(0, model.cfg.vocab_size, (3, 20))
    with torch.no_grad():
        runtime = model(x, torch.zeros_like(x))[0]
    merged_dir = merge(out, tmp_path / "merged")
    from corpusforge.train.sample import load_model

    merged, _ = load_model(merged_dir)
    with torch.no_grad():
        folded = merged(x, torch.zeros_like(x))[0]
    assert torch.allclose(runtime, folded, atol=1e-5)
    transformers = pytest.importorskip("transformers")
    from corpusforge.train.export import export_gpt2

    dest = export_gpt2(merged_dir, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(dest)).eval()
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, folded, atol=1e-4)


def test_zero_length_prefix_is_the_base_model(base):
    _, ckpt_dir = base
    from corpusforge.adapt.finetune import base_checkpoint, load_base
    from corpusforge.adapt.prefix import PrefixKV

    model = load_base(base_checkpoint(ckpt_dir)).eval()
    c = model.cfg
    x = torch.randint(0, c.vocab_size, (2, 16))
    empty = PrefixKV(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_tokens=0, seed=0)
    with torch.no_grad():
        # The prefix path (explicit mask, here all causal) against the plain causal kernel: equal to float error.
        assert torch.allclose(model(x, x)[0], model(x, x, prefixes=empty())[0], atol=1e-5, rtol=0)


def test_prefix_attention_equals_a_reference_with_the_ones_then_causal_mask():
    """Against attention written out by hand: query i sees every prefix key and sequence keys 0..i. A plain
    causal flag over the P + T keys (query i seeing keys 0..i) is shown to differ, so this check can fail."""
    import math

    import torch.nn.functional as F

    from corpusforge.train.model import CausalSelfAttention, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    attn = CausalSelfAttention(cfg).eval()
    B, T, P, H, D = 2, 6, 3, 2, 4
    x = torch.randn(B, T, 8)
    pk, pv = torch.randn(1, H, P, D), torch.randn(1, H, P, D)
    with torch.no_grad():
        got = attn(x, (pk, pv))
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in attn.qkv(x).split(8, dim=2))
        K, V = torch.cat((pk.expand(B, -1, -1, -1), k), 2), torch.cat((pv.expand(B, -1, -1, -1), v), 2)
        allowed = torch.tensor([[j < P or j - P <= i for j in range(P + T)] for i in range(T)])
        scores = (q @ K.transpose(-1, -2) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
        ref = attn.proj((scores.softmax(-1) @ V).transpose(1, 2).reshape(B, T, 8))
        flag = attn.proj(F.scaled_dot_product_attention(q, K, V, is_causal=True).transpose(1, 2).reshape(B, T, 8))
    assert torch.allclose(got, ref, atol=1e-5)
    assert (flag - ref).abs().max() > 1e-3


def test_prefix_mask_lets_every_query_see_the_prefix_and_only_its_past(base):
    """A prefix changes every position's output, and a later token never changes an earlier position's."""
    _, ckpt_dir = base
    from corpusforge.adapt.finetune import base_checkpoint, load_base
    from corpusforge.adapt.prefix import PrefixKV

    model = load_base(base_checkpoint(ckpt_dir)).eval()
    c = model.cfg
    pre = PrefixKV(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_tokens=4, seed=0)
    with torch.no_grad():
        pre.kv.mul_(200.0)  # strong prefixes
        x = torch.randint(0, c.vocab_size, (1, 12))
        y = x.clone()
        y[0, -1] = (y[0, -1] + 1) % c.vocab_size
        a, b = model(x, x, prefixes=pre())[0], model(y, y, prefixes=pre())[0]
        base_out = model(x, x)[0]
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)  # causal over the sequence
    assert (a - base_out).abs().amax(-1).min() > 1e-3  # the prefix reaches position 0 too


def test_qlora_base_is_smaller_and_still_learns(base):
    d, ckpt_dir = base
    lora = d / "ft-lora"
    if not (lora / "adapter.json").is_file():
        finetune(ckpt_dir, d / "task.jsonl", lora, FinetuneConfig(method="lora", **CFG), quiet=True)
    q = finetune(
        ckpt_dir, d / "task.jsonl", d / "ft-qlora", FinetuneConfig(method="lora", quantize="nf4", **CFG), quiet=True
    )
    plain = json.loads((lora / "adapter.json").read_text())
    assert q["frozen_weight_bytes"] < 0.5 * plain["frozen_weight_bytes"]
    assert q["final_eval"]["val_loss"] < 0.5 * q["first_eval"]["val_loss"]


def test_nf4_round_trip_error_is_small():
    from corpusforge.adapt.nf4 import NF4Linear, nf4_levels

    lv = nf4_levels()
    assert lv.numel() == 16 and lv[0] == -1 and lv[-1] == 1 and (lv == 0).sum() == 1
    lin = torch.nn.Linear(96, 40)
    q = NF4Linear(lin)
    err = (q.dequantize() - lin.weight).abs().mean() / lin.weight.abs().mean()
    assert err < 0.12
    assert q.nbytes() == 96 * 40 // 2 + (96 * 40 // 64) * 4


def test_reward_model_learns_a_planted_preference(base):
    d, ckpt_dir = base
    rng = random.Random(11)
    rows = []
    for s in corpus(12, 160):
        words = s.split()[:6]
        comps = [" ".join(words[:3] + ["an apple"] * k + words[3:]) for k in (2, 1, 0)]  # more apples: better
        rows.append({"prompt": " ".join(words[:4]), "completions": comps})
    rng.shuffle(rows)
    write = d / "ranked.jsonl"
    write.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = FinetuneConfig(method="full", max_iters=80, eval_interval=40, batch_size=8, val_fraction=0.2)
    report = train_reward(ckpt_dir, write, d / "rm", cfg, quiet=True)
    assert report["final_eval"]["val_pair_accuracy"] >= 0.9
    scores = score(d / "rm", rows[:5])
    assert all(s[0] > s[-1] for s in scores)


def test_pairwise_loss_is_a_mean_per_prompt_then_over_prompts():
    from corpusforge.adapt.reward import pairwise_loss

    r = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    lsig = torch.nn.functional.logsigmoid
    four = -sum(lsig(r[0, a] - r[0, b]) for a in range(4) for b in range(a + 1, 4)) / 6  # C(4, 2) pairs
    two = -lsig(r[1, 0] - r[1, 1])
    loss, acc = pairwise_loss(r, valid)
    assert torch.allclose(loss, (four + two) / 2)  # not the mean over all 7 pairs
    assert torch.allclose(acc, torch.tensor(6 / 7))


def test_kill_during_finetuning_resumes_exactly(base, tmp_path):
    d, ckpt_dir = base
    args = ["--data", str(d / "task.jsonl"), "--method", "lora", "--set", "eval_interval=10", "--max-iters", "30"]
    straight = tmp_path / "straight"
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "corpusforge.cli", "finetune", str(ckpt_dir)]
    r = subprocess.run(
        [*cmd, "--out", str(straight), *args], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(
        [*cmd, "--out", str(killed), *args],
        env=cli_env() | {"CORPUSFORGE_FAULT": "finetune:15"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 137
    r = subprocess.run([*cmd, "--out", str(killed), *args], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    def losses(p: Path):
        return [json.loads(x).get("loss") for x in (p / "metrics.jsonl").read_text().splitlines() if "loss" in x]

    assert losses(killed) == losses(straight)
    report = json.loads((killed / "adapter.json").read_text())
    # The first evaluation (before step 1) came from the killed run's checkpoint, not from the resumed process.
    assert report["first_eval"] == json.loads((straight / "adapter.json").read_text())["first_eval"]
    # A rerun of a finished run keeps its report (it once rewrote it with empty figures and the summary crashed).
    r = subprocess.run([*cmd, "--out", str(killed), *args], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finished before" in r.stdout and "ms/step" in r.stdout
    assert json.loads((killed / "adapter.json").read_text()) == report


def test_rows_with_no_target_are_dropped_and_counted_and_no_split_gives_no_val_loss(base, tmp_path):
    d, ckpt_dir = base
    rows = [json.loads(x) for x in (d / "task.jsonl").read_text().splitlines()][:40]
    long = " ".join(["the old stone bridge"] * 40)  # far more than the 48-token window
    rows[:3] = [{"prompt": long, "response": " " + TASK}] * 3
    data = tmp_path / "task.jsonl"
    dump(data, rows)
    cfg = FinetuneConfig(method="lora", max_iters=4, eval_interval=4, batch_size=8, val_fraction=0.0)
    report = finetune(ckpt_dir, data, tmp_path / "ft", cfg, quiet=True)
    assert report["rows"] == {"train": 37, "val": 0, "truncated": 4, "dropped": 3}  # 4 task rows are longer too
    assert report["first_eval"] == {} and report["final_eval"] == {}  # not a val_loss of 0.0
    assert all(
        json.loads(x).get("loss") == json.loads(x).get("loss") for x in (tmp_path / "ft" / "metrics.jsonl").open()
    )
    dump(data, rows[:3])
    with pytest.raises(ConfigError, match="fills the model's window"):
        finetune(ckpt_dir, data, tmp_path / "ft2", cfg, quiet=True)

    class Words:  # an encoder of one token per word
        eot = 0

        def __call__(self, text):
            return [1] * len(text.split())

    ranked = [{"prompt": "the bridge", "completions": ["a", "b"]}, {"prompt": long, "completions": ["a", "b"]}]
    dump(data, ranked)
    got = rank_data(load_rows(data), Words(), 48, 0.0, "x")  # training: dropped, counted
    assert (len(got), got.dropped) == (1, 1)
    with pytest.raises(ConfigError, match="line 2: the prompt fills"):  # scoring: an error naming the line
        rank_data(load_rows(data), Words(), 48, 0.0, "x", drop_full=False)


def test_a_tokenizer_changed_since_the_base_tokens_is_refused(base, tmp_path):
    import shutil

    d, ckpt_dir = base
    tok = Path(json.loads((d / "run" / "tokens" / "manifest.json").read_text())["tokenizer_path"])
    keep = tmp_path / "keep.json"
    shutil.copy(tok, keep)
    try:
        tok.write_text(tok.read_text() + "\n")  # the same tokenizer, other bytes: its digest changes
        with pytest.raises(ConfigError, match="changed since the base model's tokens"):
            finetune(ckpt_dir, d / "task.jsonl", tmp_path / "ft", FinetuneConfig(max_iters=1), quiet=True)
    finally:
        shutil.copy(keep, tok)


def dump(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_folded_and_low_rank_lora_paths_agree():
    from corpusforge.adapt.lora import LoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(24, 40)
    a, b = (
        LoRALinear(base, r=4, alpha=8, dropout=0.0, fold=True),
        LoRALinear(base, r=4, alpha=8, dropout=0.0, fold=False),
    )
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.lora_b.normal_()
        b.lora_b.copy_(a.lora_b)
    x = torch.randn(3, 5, 24)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(a.lora_a.grad, b.lora_a.grad, atol=1e-4) and torch.allclose(
        a.lora_b.grad, b.lora_b.grad, atol=1e-4
    )


def test_the_device_is_chosen_and_a_run_resumes_on_another_device_or_thread_count(base, tmp_path, monkeypatch):
    from corpusforge.adapt.finetune import Loop

    d, ckpt_dir = base
    cfg = FinetuneConfig(method="lora", max_iters=4, eval_interval=4, batch_size=8)
    report = finetune(ckpt_dir, d / "task.jsonl", tmp_path / "ft", cfg, quiet=True)
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and report["iters"] == 4
    # The same run on the CPU with other threads: resumed from its checkpoint (it was refused as another config).
    threads = torch.get_num_threads()
    try:
        again = Loop(
            ckpt_dir, d / "task.jsonl", tmp_path / "ft", FinetuneConfig(**{**vars(cfg), "device": "cpu", "threads": 1})
        )
        assert again.step == 4 and again.device == "cpu"
        assert all(p.device.type == "cpu" for p in again.trainable)
        assert again.run(quiet=True) == report  # finished before: its report, unchanged
    finally:
        torch.set_num_threads(threads)
    # What a run computes still counts: another rank is another run.
    with pytest.raises(ConfigError, match="another config"):
        Loop(ckpt_dir, d / "task.jsonl", tmp_path / "ft", FinetuneConfig(**{**vars(cfg), "lora_r": 4}))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU") as err:
            finetune(
                ckpt_dir, d / "task.jsonl", tmp_path / "ft2", FinetuneConfig(max_iters=1, device="cuda"), quiet=True
            )
        assert err.value.path == "device"
