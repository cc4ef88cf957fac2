"""The bundled GPT trainer on tiny configs (RELIABILITY items 34–38, 40)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from corpusforge.document import Document  # noqa: E402
from corpusforge.errors import ConfigError, DivergedError  # noqa: E402
from corpusforge.tokens.stage import write_token_shards  # noqa: E402
from corpusforge.tokens.tokenizer import train_tokenizer  # noqa: E402
from corpusforge.train import checkpoint as ckpt  # noqa: E402
from corpusforge.train.config import TrainConfig  # noqa: E402
from corpusforge.train.model import GPT, GPTConfig  # noqa: E402
from corpusforge.train.train import train  # noqa: E402
from tests.conftest import cli_env  # noqa: E402

TEXT = "".join(
    f"To be, or not to be, that is the question {i}: whether 'tis nobler in the mind to suffer.\n" for i in range(300)
)
TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=32,
    batch_size=4,
    lr=3e-3,
    warmup_iters=2,
    eval_iters=2,
    sample_tokens=0,
    threads=1,
    log_interval=5,
)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer([TEXT], algorithm="char")
    (d / "tokenizer.json").write_text(tok.to_str())
    n = int(len(TEXT) * 0.9)
    docs = [
        Document(id="train", text=TEXT[:n], metadata={"split": "train"}),
        Document(id="val", text=TEXT[n:], metadata={"split": "val"}),
    ]
    write_token_shards(docs, tok, d / "tokens")
    return d / "tokens"


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_forward_shapes_and_causality(pos):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_encoding=pos)).eval()
    x = torch.randint(0, 50, (3, 16))
    logits, loss = m(x, x)
    assert logits.shape == (3, 16, 50) and loss.ndim == 0
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 50  # change the future
    l2, _ = m(y, y)
    assert torch.allclose(logits[:, :10], l2[:, :10], atol=1e-6) and not torch.allclose(logits[:, 10:], l2[:, 10:])
    assert m.lm_head.weight.data_ptr() == m.wte.weight.data_ptr()  # tied head


def test_loss_decreases_and_outputs_are_written(tokens, tmp_path):
    res = train(
        TrainConfig(**(TINY | {"sample_tokens": 20}), max_iters=60, eval_interval=30),
        tokens,
        tmp_path / "o",
        quiet=True,
    )
    first = sum(v for _, v in res.train_losses[:5]) / 5
    last = sum(v for _, v in res.train_losses[-5:]) / 5
    assert last < first - 0.5
    out = tmp_path / "o"
    assert (out / "loss.png").is_file() and (out / "samples.txt").read_text().strip()
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-0000060", "step-0000030"]
    assert list((out / "tensorboard").iterdir())


@pytest.mark.slow
def test_exact_resume_after_kill_minus_9(tokens, tmp_path):
    args = [sys.executable, "-m", "corpusforge.cli", "train", str(tokens)]
    sets = [f"--set={k}={v}" for k, v in (TINY | {"max_iters": 20, "eval_interval": 5, "dropout": 0.1}).items()]
    straight = subprocess.run(
        [*args, "--out", "a", *sets], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180
    )
    assert straight.returncode == 0, straight.stderr
    env = cli_env() | {"CORPUSFORGE_FAULT": "train:12"}  # dies hard after iteration 12 (checkpoint at 10)
    killed = subprocess.run(
        [*args, "--out", "b", *sets], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert killed.returncode == 137
    resumed = subprocess.run(
        [*args, "--out", "b", *sets], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "step-0000010" in resumed.stdout
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert all(a[k] == b[k] for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]


def test_corrupt_or_pickled_checkpoint_falls_back_and_never_runs_code(tokens, tmp_path):
    out = tmp_path / "o"
    train(TrainConfig(**TINY, max_iters=10, eval_interval=5), tokens, out, quiet=True)
    newest, previous = ckpt.list_checkpoints(out / "checkpoints")[:2]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    (newest / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    loaded = ckpt.load_latest(out / "checkpoints")
    assert loaded is not None and loaded.path == previous
    assert not marker.exists()
    # A partial save (kill during a checkpoint write) is ignored and removed.
    (out / "checkpoints" / "step-0000099.tmp").mkdir()
    assert ckpt.load_latest(out / "checkpoints").path == previous
    assert not (out / "checkpoints" / "step-0000099.tmp").exists()


def test_changed_data_is_refused_unless_forced(tokens, tmp_path):
    out = tmp_path / "o"
    train(TrainConfig(**TINY, max_iters=5, eval_interval=5), tokens, out, quiet=True)
    other = tmp_path / "tokens2"
    tok = train_tokenizer([TEXT], algorithm="char")
    write_token_shards(
        [
            Document(id="x", text=TEXT[::-1], metadata={"split": "train"}),
            Document(id="v", text=TEXT[:3000], metadata={"split": "val"}),
        ],
        tok,
        other,
    )
    with pytest.raises(ConfigError, match="changed"):
        train(TrainConfig(**TINY, max_iters=8, eval_interval=4), other, out, quiet=True)
    res = train(TrainConfig(**TINY, max_iters=8, eval_interval=4), other, out, quiet=True, force=True)
    assert res.step == 8


def test_nan_loss_stops_and_keeps_the_good_checkpoint(tokens, tmp_path, monkeypatch):
    out = tmp_path / "o"
    monkeypatch.setenv("CORPUSFORGE_FAULT", "train_nan:8")
    with pytest.raises(DivergedError):
        train(TrainConfig(**TINY, max_iters=20, eval_interval=5), tokens, out, quiet=True)
    cps = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in cps] == ["step-0000005"]
    assert ckpt.load_one(cps[0]).state["step"] == 5


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
@pytest.mark.slow
def test_export_to_transformers_matches_logits_and_generates(tokens, tmp_path, pos):
    transformers = pytest.importorskip("transformers")
    from corpusforge.train.export import export_gpt2, load_model

    out = tmp_path / "o"
    cfg = TrainConfig(**(TINY | {"pos_encoding": pos, "bias": pos == "learned"}), max_iters=10, eval_interval=10)
    train(cfg, tokens, out, quiet=True, tokenizer_path=tokens.parent / "tokenizer.json")
    dest = export_gpt2(out, tmp_path / "hf", tokenizer_path=tokens.parent / "tokenizer.json")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(dest), local_files_only=True).eval()
    ours, _ = load_model(out)
    x = torch.randint(0, ours.cfg.vocab_size, (2, 32))
    with torch.no_grad():
        theirs = hf(x).logits
        mine = ours.lm_head(ours.ln_f(_hidden(ours, x)))
    assert (theirs - mine).abs().max().item() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(str(dest), local_files_only=True)
    ids = tok("To be", return_tensors="pt").input_ids
    gen = hf.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] == ids.shape[1] + 5 and tok.decode(gen[0]).startswith("To be")


def _hidden(model, x):
    pos = torch.arange(x.shape[1])
    h = model.wte(x) + (model.wpe(pos) if model.cfg.pos_encoding == "learned" else model.pos_table[: x.shape[1]])
    for b in model.blocks:
        h = b(h)
    return h


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(tokens, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        "--master_port=29533",
        "-m",
        "corpusforge.cli",
        "train",
        str(tokens),
        "--out",
        "o",
    ]
    cmd += [f"--set={k}={v}" for k, v in (TINY | {"max_iters": 20, "eval_interval": 10}).items()]
    # Loopback only (CI runs in a network namespace where the hostname resolves to no interface gloo can use).
    env = cli_env() | {"GLOO_SOCKET_IFNAME": "lo"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = ckpt.load_latest(tmp_path / "o" / "checkpoints")
    assert loaded.state["step"] == 20 and len(loaded.state["data_states"]) == 2
    assert loaded.state["data_states"][0] != loaded.state["data_states"][1]  # each rank drew its own windows
    losses = _losses(tmp_path / "o")
    assert sorted(losses) == list(range(1, 21)) and losses[20] < losses[1]


@pytest.mark.slow
def test_a_flipped_byte_in_the_shards_is_refused_before_training(tokens, tmp_path):
    """A shard altered after the tokens stage wrote it fails loudly (sha256 against the manifest), by the
    trainer and by the CLI with exit 1, before any checkpoint exists."""
    import shutil

    from corpusforge.errors import ShardError

    bad = tmp_path / "tokens"
    shutil.copytree(tokens, bad)
    shard = sorted((bad / "train").glob("*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the token values: sizes and row counts still match the manifest
    shard.write_bytes(bytes(data))
    out = tmp_path / "o"
    with pytest.raises(ShardError, match="sha256"):
        train(TrainConfig(**TINY, max_iters=2, eval_interval=2), bad, out, quiet=True)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "corpusforge.cli",
            "train",
            str(bad),
            "--out",
            str(tmp_path / "o2"),
            "--set",
            "max_iters=2",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert shard.name in proc.stdout + proc.stderr


def test_math_and_flash_attention_paths_agree():
    """The CPU path for short sequences (SDPA's math backend) computes the same attention as the flash kernel
    used for long ones, forward and backward."""
    from torch.nn import functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 16, generator=g, requires_grad=True) for _ in range(3))
    outs = []
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(backend):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        grads = torch.autograd.grad(y.square().sum(), (q, k, v))
        outs.append((y.detach(), grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_precision_choice_and_default_learning_rate():
    from corpusforge.train.precision import amp_dtype, cpu_has_bf16

    assert amp_dtype("cpu", "float32") is None
    assert amp_dtype("cpu", "bfloat16") is torch.bfloat16
    assert amp_dtype("cpu", "auto") is (torch.bfloat16 if cpu_has_bf16() else None)
    with pytest.raises(ConfigError, match="float16") as e:
        amp_dtype("cpu", "float16")
    assert e.value.path == "dtype"
    # Peak lr scales with 1/width (capped); min_lr follows it; explicit values are kept.
    assert TrainConfig(n_embd=128).lr == pytest.approx(3e-3)
    assert TrainConfig(n_embd=384).lr == pytest.approx(1e-3)
    assert TrainConfig(n_embd=768).lr == pytest.approx(5e-4)
    assert TrainConfig(n_embd=32).lr == pytest.approx(3e-3)
    assert TrainConfig(n_embd=384).min_lr == pytest.approx(1e-4)
    c = TrainConfig(lr=2e-3, min_lr=0.0)
    assert (c.lr, c.min_lr) == (2e-3, 0.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_training_in_each_precision_learns(tokens, tmp_path, dtype):
    res = train(TrainConfig(**(TINY | {"max_iters": 30, "eval_interval": 30, "dtype": dtype})), tokens, tmp_path)
    losses = [v for _, v in res.train_losses]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    state = json.loads(next((tmp_path / "checkpoints").glob("*/state.json")).read_text())
    assert state["precision"] == dtype


def test_train_config_is_the_schema_of_the_stage_and_of_the_cli(tmp_path):
    """TrainConfig's fields, bounds included, are what a recipe's train stage and ``train --set`` accept;
    verify_data is one of them but stays out of the stage's config hash (it cannot change the output)."""
    from corpusforge.params import validate_kwargs
    from corpusforge.recipe import validate_recipe
    from corpusforge.train.stage import TrainStage

    recipe = validate_recipe({"name": "t", "stages": [{"kind": "train", "verify_data": False, "n_layer": 2}]})
    assert recipe.stages[0].params == {"verify_data": False, "n_layer": 2}
    assert TrainStage(**recipe.stages[0].params).config() == TrainStage(n_layer=2).config()
    assert "verify_data" not in TrainStage().config() and TrainStage().config()["lr"] is None
    from corpusforge.plan import make_plan

    plain = validate_recipe({"name": "t", "stages": [{"kind": "train", "n_layer": 2}]})
    assert make_plan(recipe)[0].config_hash == make_plan(plain)[0].config_hash
    with pytest.raises(ConfigError, match="n_layer") as e:
        validate_kwargs(TrainConfig, {"n_layer": 0}, "")
    assert e.value.path == "n_layer"
    with pytest.raises(ConfigError, match=r"stages\[0\]\.dropout: must be <= 0.9"):
        validate_recipe({"name": "t", "stages": [{"kind": "train", "dropout": 1.5}]})
    # The CLI accepts the key and gets as far as the missing tokens folder (exit 2, a config error).
    proc = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "train", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
        + ["--set", "verify_data=false"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and "manifest.json" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def _cli_train(tmp_path, *args, timeout=120, **kw):
    cmd = [sys.executable, "-m", "corpusforge.cli", "train", *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=timeout, **kw)


def _tiny_sets(**over):
    return [x for k, v in (TINY | over).items() for x in ("--set", f"{k}={v}")]


@pytest.mark.slow
def test_a_second_trainer_on_the_same_folder_exits_locked(tokens, tmp_path):
    import signal
    import time

    from corpusforge.errors import LOCKED, PARTIAL

    cmd = [sys.executable, "-m", "corpusforge.cli", "train", str(tokens), "--out", "o"]
    cmd += _tiny_sets(max_iters=100_000, eval_interval=100_000)
    first = subprocess.Popen(
        cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 60
        metrics = tmp_path / "o" / "metrics.jsonl"
        while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
            time.sleep(0.1)
        assert metrics.read_text().strip(), "the first trainer never logged a step"
        second = _cli_train(tmp_path, tokens, "--out", "o", *_tiny_sets(max_iters=10))
        assert second.returncode == LOCKED, second.stderr
        assert "locked" in second.stderr and second.stdout.count("iter ") == 0
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == PARTIAL, err


@pytest.mark.slow
def test_train_on_a_folder_that_is_not_token_shards_says_what_it_is(tmp_path):
    from corpusforge.errors import DONE
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    raw = {
        "name": "t",
        "workdir": str(tmp_path / "w"),
        "stages": [{"kind": "test_source", "docs": 30}, {"kind": "tokenizer", "algorithm": "char"}],
    }
    assert run_recipe(validate_recipe(raw)).status == DONE
    for folder, what in (("test_source", "document shards"), ("tokenizer", "a tokenizer")):
        p = _cli_train(tmp_path, tmp_path / "w" / folder, "--out", "o")
        assert p.returncode == 2, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and what in lines[0] and "not token shards" in lines[0], p.stderr


@pytest.mark.slow
def test_every_checkpoint_corrupt_fails_unless_forced(tokens, tmp_path):
    from corpusforge.errors import DONE, FAILED, ShardError

    out = tmp_path / "o"
    train(TrainConfig(**TINY, max_iters=10, eval_interval=5), tokens, out, quiet=True)
    for c in ckpt.list_checkpoints(out / "checkpoints"):
        (c / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ShardError, match="every checkpoint in .* is corrupt.*--force"):
        train(TrainConfig(**TINY, max_iters=12, eval_interval=5), tokens, out, quiet=True)
    p = _cli_train(tmp_path, tokens, "--out", out, *_tiny_sets(max_iters=12, eval_interval=5))
    assert p.returncode == FAILED and "every checkpoint" in p.stderr and "falling back" not in p.stdout + p.stderr
    p = _cli_train(tmp_path, tokens, "--out", out, "--force", *_tiny_sets(max_iters=12, eval_interval=5))
    assert p.returncode == DONE, p.stderr
    assert "starts again from step 0" in p.stdout and "resumed from" not in p.stdout
