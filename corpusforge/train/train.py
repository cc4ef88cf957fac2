"""The training loop: token shards → GPT, with exact resume, evaluation, metrics and sampling.

One ``TrainConfig`` describes a run. ``train(cfg, tokens_dir, out_dir)`` resumes from the newest good
checkpoint in ``out_dir/checkpoints`` (refusing changed training data unless ``force``), then runs to
``max_iters``: per iteration ``grad_accum`` micro-batches, gradient clipping, AdamW with decay/no-decay
groups, linear warmup then cosine decay to ``min_lr``. Every ``eval_interval`` iterations (and at the end)
it measures val loss and bits per byte and saves a checkpoint. A NaN/inf loss raises ``DivergedError``
before any checkpoint of that state is written.

Exact resume: the data cursor (sampler RNG), the torch RNG (dropout), the optimizer moments and the step are
all in the checkpoint; evaluation draws from its own generator, so it never shifts the training batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from corpusforge.errors import ConfigError, DivergedError
from corpusforge.train import checkpoint as ckpt
from corpusforge.train.data import TokenData, data_fingerprint
from corpusforge.train.model import GPT, GPTConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    pos_encoding: Literal["learned", "sinusoidal"] = "learned"
    # optimization (defaults: nanoGPT's shakespeare-char CPU example)
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # default: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    keep_checkpoints: int = 3
    sample_tokens: int = 200
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    threads: int | None = None
    deterministic: bool = False

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
            bias=self.bias,
            pos_encoding=self.pos_encoding,
        )


@dataclass
class TrainResult:
    partial: bool
    step: int
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    sample: str = ""
    checkpoint: Path | None = None
    mfu: float = 0.0


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup for ``warmup_iters``, then cosine decay to ``min_lr`` at ``lr_decay_iters``."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it > decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def _device(cfg: TrainConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA GPU is visible", path="device")
    return cfg.device


def _autocast(device: str, dtype: str):  # type: ignore[no-untyped-def]
    import contextlib

    if device != "cuda":
        return contextlib.nullcontext()  # float32 on the CPU
    dt = {
        "auto": torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[dtype]
    return torch.autocast(device_type="cuda", dtype=dt)


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and, when tensorboard is installed, event files."""

    def __init__(self, out_dir: Path, resume_step: int) -> None:
        self.path = out_dir / "metrics.jsonl"
        # Drop lines past the step we resume from: they belong to work the checkpoint does not contain.
        if self.path.is_file():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.tb = None

    def write(self, step: int, **values: float) -> None:
        self.fh.write(json.dumps({"step": step, **values}) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def _plot(out_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines() if ln]
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train loss", linewidth=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="val loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_dir / "loss.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out_dir / "loss.png")


def _bytes_per_token(tokens_dir: Path) -> float | None:
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    tok = manifest.get("tokenizer_path")
    if tok:
        report = Path(tok).parent / "report.json"
        if report.is_file():
            return float(json.loads(report.read_text())["overall"].get("bytes_per_token") or 0) or None
    return manifest.get("bytes_per_token")


def train(
    cfg: TrainConfig,
    tokens_dir: Path,
    out_dir: Path,
    *,
    force: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    quiet: bool = False,
    tokenizer_path: Path | None = None,
) -> TrainResult:
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    say = (lambda *a: None) if quiet else print
    torch.manual_seed(cfg.seed)
    mcfg = cfg.model_config(int(manifest["vocab_size"]))
    model = GPT(mcfg).to(device)
    opt_kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    if device == "cuda":
        opt_kwargs["fused"] = True
    optimizer = torch.optim.AdamW(model.param_groups(cfg.weight_decay), **opt_kwargs)
    train_data = TokenData(tokens_dir, "train", cfg.block_size, cfg.seed)
    fingerprint = data_fingerprint(tokens_dir)
    ck_dir = out_dir / "checkpoints"
    step = 0
    loaded = ckpt.load_latest(ck_dir)
    if loaded is not None:
        st = loaded.state
        if st.get("data_fingerprint") != fingerprint and not force:
            raise ConfigError(
                f"the training data in {tokens_dir} changed since checkpoint {loaded.path.name} was written; "
                "use --force to resume on the new data, or a new --out folder",
                path="tokens",
            )
        if st.get("model") != mcfg.to_dict():
            raise ConfigError(
                f"checkpoint {loaded.path} was made with another model config; use a new --out", path="model"
            )
        model.load_state_dict(loaded.model, strict=False)
        ckpt.restore_optimizer(optimizer, loaded.optim, st["optimizer"])
        torch.set_rng_state(loaded.optim["rng.torch"])
        train_data.set_state(st["data_state"])
        step = int(st["step"])
        say(f"resumed from {loaded.path} at step {step}")
    val_split = "val" if manifest.get("tokens", {}).get("val", 1) > cfg.block_size + 1 else "train"
    val_data = TokenData(tokens_dir, val_split, cfg.block_size, cfg.seed + 1)
    bpt = _bytes_per_token(tokens_dir)
    run_model: Any = torch.compile(model) if cfg.compile else model
    metrics = MetricsLog(out_dir, step)
    result = TrainResult(partial=False, step=step)
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.grad_accum
    flops_per_iter = model.flops_per_token() * tokens_per_iter

    def evaluate() -> float:
        model.eval()
        val_data.rng = __import__("numpy").random.Generator(__import__("numpy").random.PCG64(cfg.seed + 7))
        losses = torch.zeros(cfg.eval_iters)
        with torch.no_grad(), _autocast(device, cfg.dtype):
            for k in range(cfg.eval_iters):
                x, y = val_data.batch(cfg.batch_size, device)
                _, loss = run_model(x, y)
                losses[k] = loss.item()
        model.train()
        return float(losses.mean())

    def save_checkpoint(at: int) -> Path:
        return ckpt.save(
            ck_dir,
            at,
            model,
            optimizer,
            {
                "model": mcfg.to_dict(),
                "train": asdict(cfg),
                "data_fingerprint": fingerprint,
                "data_state": train_data.state(),
                "tokens_dir": str(tokens_dir.resolve()),
            },
            keep=cfg.keep_checkpoints,
        )

    # Test hooks (RELIABILITY items 34, 38): "train:K" exits hard after iteration K; "train_nan:K" makes
    # iteration K's loss NaN.
    fault = os.environ.get("CORPUSFORGE_FAULT", "")
    say(f"model: {model.num_params() / 1e6:.2f} M parameters, device {device}, {tokens_per_iter} tokens/iteration")
    t0 = time.perf_counter()
    t_last, it_last = t0, step
    model.train()
    try:
        while step < cfg.max_iters:
            if should_stop():
                result.checkpoint = save_checkpoint(step)
                result.partial = True
                break
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                x, y = train_data.batch(cfg.batch_size, device)
                with _autocast(device, cfg.dtype):
                    _, loss = run_model(x, y)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            loss_val = float(loss_sum) / cfg.grad_accum
            if fault == f"train_nan:{step + 1}":
                loss_val = float("nan")
            if not math.isfinite(loss_val):
                raise DivergedError(f"loss is {loss_val} at iteration {step}; the last good checkpoint is kept")
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.train_losses.append((step, loss_val))
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                now = time.perf_counter()
                tps = (step - it_last) * tokens_per_iter / max(now - t_last, 1e-9)
                t_last, it_last = now, step
                metrics.write(step, loss=loss_val, lr=lr, tokens_per_s=tps)
                say(f"iter {step:6d}  loss {loss_val:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s")
            else:
                metrics.write(step, loss=loss_val)
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                vl = evaluate()
                bpb = vl / math.log(2) / bpt if bpt else None
                result.val_losses.append((step, vl))
                metrics.write(step, val_loss=vl, **({"bits_per_byte": bpb} if bpb else {}))
                say(f"eval   {step:6d}  val loss {vl:.4f}" + (f"  bits/byte {bpb:.3f}" if bpb else ""))
                result.checkpoint = save_checkpoint(step)
            if fault == f"train:{step}":
                os._exit(137)
    finally:
        metrics.close()
    result.step = step
    result.wall_s = time.perf_counter() - t0
    done_iters = len(result.train_losses)
    result.tokens_per_s = done_iters * tokens_per_iter / max(result.wall_s, 1e-9)
    result.mfu = flops_per_iter * done_iters / max(result.wall_s, 1e-9)
    if not result.partial:
        _plot(out_dir)
        if cfg.sample_tokens > 0:
            result.sample = sample_text(
                model, tokens_dir, cfg.sample_tokens, device=device, seed=cfg.seed, tokenizer_path=tokenizer_path
            )
            (out_dir / "samples.txt").write_text(result.sample + "\n", encoding="utf-8")
    return result


def find_tokenizer(tokens_dir: Path, tokenizer_path: Path | None = None) -> Path | None:
    if tokenizer_path is not None:
        return Path(tokenizer_path)
    manifest = json.loads((Path(tokens_dir) / "manifest.json").read_text())
    for cand in (
        manifest.get("tokenizer_path"),
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
    from tokenizers import Tokenizer

    path = find_tokenizer(tokens_dir, tokenizer_path)
    manifest = json.loads((Path(tokens_dir) / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(path)) if path else None
    start = tok.encode(prompt).ids if (tok and prompt) else [int(manifest.get("eot_id", 0))]
    g = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = model.generate(torch.tensor([start], device=device), n, temperature=temperature, top_k=top_k, generator=g)
    ids = out[0].tolist()
    return tok.decode(ids, skip_special_tokens=True) if tok else " ".join(map(str, ids))
