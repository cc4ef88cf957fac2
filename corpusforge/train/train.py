"""The training loop: token shards → GPT, with exact resume, evaluation, metrics and sampling.

One ``TrainConfig`` describes a run. ``train(cfg, tokens_dir, out_dir)`` resumes from the newest good
checkpoint in ``out_dir/checkpoints`` (refusing changed training data unless ``force``), then runs to
``max_iters``: per iteration ``grad_accum`` micro-batches, gradient clipping, AdamW with decay/no-decay
groups, linear warmup then cosine decay to ``min_lr``. Every ``eval_interval`` iterations (and at the end)
it measures val loss and bits per byte and saves a checkpoint. A NaN/inf loss raises ``DivergedError``
before any checkpoint of that state is written.

Exact resume: the data cursor (sampler RNG), the torch RNG (dropout), the optimizer moments and the step are
all in the checkpoint; evaluation draws from its own generator, so it never shifts the training batches.

Per-step losses stay on the device and are read back every ``log_interval`` iterations (one host sync, and
one all-reduce under DDP, per interval); the NaN check runs on each read-back and always before a checkpoint.

Data parallel: under ``torchrun`` (WORLD_SIZE > 1) each process draws its own windows (seed + rank), DDP
averages the gradients (gloo on CPU, NCCL on GPUs), rank 0 writes metrics and checkpoints, and the
checkpoint holds every rank's data cursor, gathered as JSON bytes in a uint8 tensor (no pickles).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from corpusforge.errors import ConfigError, DivergedError
from corpusforge.train import checkpoint as ckpt
from corpusforge.train.data import TokenData, data_fingerprint
from corpusforge.train.model import GPT, GPTConfig
from corpusforge.train.sample import find_tokenizer, sample_text

__all__ = ["TrainConfig", "TrainResult", "find_tokenizer", "lr_at", "sample_text", "train"]

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
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    # optimization (defaults: nanoGPT's shakespeare-char CPU example)
    batch_size: int = 12
    grad_accum: int = 1
    max_iters: int = 2000
    # None: the peak rate scales with 1/width, 0.384 / n_embd capped at 3e-3 (1e-3 at width 384 as nanoGPT's
    # shakespeare-char config, 5e-4 at GPT-2 small's 768, 3e-3 at 128, where nanoGPT's 1e-3 under-trains:
    # benchmarks/train.py); min_lr None: lr / 10.
    lr: float | None = None
    min_lr: float | None = None
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
    verify_data: bool = True  # sha256 of every token shard against its manifest before training starts

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = auto_lr(self.n_embd)
        if self.min_lr is None:
            self.min_lr = self.lr / 10

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
            activation=self.activation,
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
    flops_per_s: float = 0.0  # model FLOPs (6N + 12LCT per token) per second of the loop's wall time


def auto_lr(n_embd: int) -> float:
    """Default peak learning rate for a model of width ``n_embd``: 0.384 / n_embd, at most 3e-3."""
    return min(3e-3, 0.384 / n_embd)


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup for ``warmup_iters``, then cosine decay to ``min_lr`` at ``lr_decay_iters``."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    assert cfg.lr is not None and cfg.min_lr is not None  # set by __post_init__
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


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16). On such a CPU oneDNN's
    bf16 matmuls run several times faster than MKL's float32 ones; elsewhere bf16 is emulated and slower."""
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.6
    except AttributeError:
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def amp_dtype(device: str, dtype: str) -> torch.dtype | None:
    """The autocast dtype of a run, or None for plain float32.

    "auto": bf16 on GPUs that support it (else fp16 with loss scaling); on the CPU, bf16 where the CPU has
    native bf16 (mixed precision: parameters, optimizer state and reductions such as softmax, layer norm and
    the loss stay float32), else float32.
    """
    if dtype == "float32":
        return None
    if device.startswith("cuda"):
        if dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if dtype == "bfloat16" else torch.float16
    if dtype == "float16":
        raise ConfigError("dtype 'float16' is for GPUs; on the CPU use 'bfloat16' or 'float32'", path="dtype")
    if dtype == "bfloat16" or cpu_has_bf16():
        return torch.bfloat16
    return None


def _autocast(device: str, dt: torch.dtype | None):  # type: ignore[no-untyped-def]
    if dt is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dt)


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


def _noop(*_: Any, **__: Any) -> None:
    return None


def _bytes_per_token(tokens_dir: Path) -> float | None:
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    tok = manifest.get("tokenizer_path")
    if tok:
        report = Path(tok).parent / "report.json"
        if report.is_file():
            return float(json.loads(report.read_text())["overall"].get("bytes_per_token") or 0) or None
    return manifest.get("bytes_per_token")


def _gather_json(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (JSON-serializable), in rank order: JSON bytes in a padded uint8 tensor, no pickle."""
    import torch.distributed as dist

    if world == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()]))
    n = int(max(s.item() for s in sizes))
    padded = torch.zeros(n, dtype=torch.uint8)
    padded[: data.numel()] = data
    bufs = [torch.zeros(n, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(bufs, padded)
    return [json.loads(bytes(b[: int(s.item())].tolist())) for b, s in zip(bufs, sizes, strict=True)]


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
    device = _device(cfg)
    # Multi-process data parallel (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK): gloo on CPU, NCCL on GPUs.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    master = rank == 0
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    say = (lambda *a: None) if (quiet or not master) else print
    amp = amp_dtype(device, cfg.dtype)
    # fp16 needs loss scaling (its exponent range is narrow); bf16 and float32 do not.
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp == torch.float16)
    torch.manual_seed(cfg.seed)
    mcfg = cfg.model_config(int(manifest["vocab_size"]))
    model = GPT(mcfg).to(device)
    # Fused AdamW: one kernel per step over all parameters (CPU and CUDA); the update is the same AdamW.
    opt_kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "fused": True}
    optimizer = torch.optim.AdamW(model.param_groups(cfg.weight_decay), **opt_kwargs)
    # Each rank draws its own windows; shards are checked against the manifest's sha256 before use.
    train_data = TokenData(tokens_dir, "train", cfg.block_size, cfg.seed + rank, verify=cfg.verify_data)
    fingerprint = data_fingerprint(tokens_dir)
    ck_dir = out_dir / "checkpoints"
    step = 0
    loaded = ckpt.load_latest(ck_dir, clean=master)
    if loaded is not None:
        st = loaded.state
        if st.get("data_fingerprint") != fingerprint and not force:
            raise ConfigError(
                f"the training data in {tokens_dir} changed since checkpoint {loaded.path.name} was written; "
                "use --force to resume on the new data, or a new --out folder",
                path="tokens",
            )
        if GPTConfig.from_dict(st["model"]) != mcfg:
            raise ConfigError(
                f"checkpoint {loaded.path} was made with another model config; use a new --out", path="model"
            )
        states = st.get("data_states") or [st["data_state"]]
        if len(states) != world:
            raise ConfigError(
                f"checkpoint {loaded.path.name} was written by {len(states)} process(es), this run has {world}; "
                "resume with the same number of processes",
                path="WORLD_SIZE",
            )
        model.load_state_dict(loaded.model, strict=False)  # lm_head.weight is wte.weight
        ckpt.restore_optimizer(optimizer, loaded.optim, st["optimizer"])
        torch.set_rng_state(loaded.optim["rng.torch"])
        if device.startswith("cuda") and "rng.cuda" in loaded.optim:
            torch.cuda.set_rng_state(loaded.optim["rng.cuda"])
        train_data.set_state(states[rank])
        if scaler.is_enabled() and "grad_scaler" in st:
            scaler.load_state_dict(st["grad_scaler"])
        step = int(st["step"])
        say(f"resumed from {loaded.path} at step {step}")
    val_split = "val" if manifest.get("tokens", {}).get("val", 1) > cfg.block_size + 1 else "train"
    val_data = TokenData(tokens_dir, val_split, cfg.block_size, cfg.seed + 1, verify=cfg.verify_data)
    bpt = _bytes_per_token(tokens_dir)
    run_model: Any = torch.compile(model) if cfg.compile else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run_model = DistributedDataParallel(run_model, device_ids=[device] if device.startswith("cuda") else None)
    metrics = MetricsLog(out_dir, step) if master else None
    write = metrics.write if metrics else _noop
    result = TrainResult(partial=False, step=step)
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.grad_accum * world
    flops_per_iter = model.flops_per_token() * tokens_per_iter

    def evaluate() -> float:
        """Mean val loss (nats/token) over ``eval_iters`` batches; the same batches at every evaluation."""
        model.eval()
        val_data.rng = np.random.Generator(np.random.PCG64(cfg.seed + 7))
        losses = torch.zeros(cfg.eval_iters, device=device)
        with torch.no_grad(), _autocast(device, amp):
            for k in range(cfg.eval_iters):
                x, y = val_data.batch(cfg.batch_size, device)
                losses[k] = model(x, y)[1]
        model.train()
        return float(losses.mean())

    def save_checkpoint(at: int) -> Path | None:
        data_states = _gather_json(train_data.state(), world)  # a collective: every rank calls it
        if not master:
            return None
        extra_rng = {"rng.cuda": torch.cuda.get_rng_state()} if device.startswith("cuda") else {}
        return ckpt.save(
            ck_dir,
            at,
            model,
            optimizer,
            {
                "model": mcfg.to_dict(),
                "train": asdict(cfg),
                "data_fingerprint": fingerprint,
                "data_states": data_states,
                "world_size": world,
                "tokens_dir": str(tokens_dir.resolve()),
                "precision": str(amp or torch.float32).removeprefix("torch."),
                **({"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            },
            keep=cfg.keep_checkpoints,
            extra_tensors=extra_rng,
        )

    # Losses of the iterations not yet read back: (step, lr, loss tensor on the device).
    pending: list[tuple[int, float, torch.Tensor]] = []

    def flush() -> float:
        """Read back pending losses (averaged over ranks), check them, write metrics; the last loss or NaN."""
        if not pending:
            return 0.0
        vals = torch.stack([p[2] for p in pending]).float()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(vals)
            vals /= world
        host = vals.tolist()
        for (at, lr, _), v in zip(pending, host, strict=True):
            if fault == f"train_nan:{at}":
                v = float("nan")
            if not math.isfinite(v):
                raise DivergedError(
                    f"loss is {v} at iteration {at}; stopped, the last good checkpoint is kept"
                    + (f" ({ckpt.list_checkpoints(ck_dir)[0].name})" if ckpt.list_checkpoints(ck_dir) else "")
                )
            result.train_losses.append((at, v))
            write(at, loss=v, lr=lr)
        pending.clear()
        return host[-1]

    def stop_now() -> bool:
        flag = bool(should_stop())
        if world > 1:  # every rank must agree, or the next all-reduce would hang
            import torch.distributed as dist

            t = torch.tensor([float(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    # Test hooks (RELIABILITY items 34, 38): "train:K" exits hard after iteration K; "train_nan:K" makes
    # iteration K's loss NaN.
    fault = os.environ.get("CORPUSFORGE_FAULT", "")
    say(
        f"model: {model.num_params() / 1e6:.2f} M parameters, {mcfg.n_layer} layers, width {mcfg.n_embd}; "
        f"device {device}" + (f" × {world} processes" if world > 1 else "") + f"; {tokens_per_iter} tokens/iteration"
    )
    t0 = time.perf_counter()
    t_last, it_last = t0, step
    model.train()
    try:
        while step < cfg.max_iters:
            if (world == 1 or step % cfg.log_interval == 0) and stop_now():
                flush()
                result.checkpoint = save_checkpoint(step)
                result.partial = True
                say(f"stopped at iteration {step}; checkpoint written, run again to resume")
                break
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                x, y = train_data.batch(cfg.batch_size, device)
                if world > 1:  # all-reduce gradients only on the last micro-step
                    run_model.require_backward_grad_sync = micro == cfg.grad_accum - 1
                with _autocast(device, amp):
                    _, loss = run_model(x, y)
                scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending.append((step, lr, loss_sum / cfg.grad_accum))
            evaluating = step % cfg.eval_interval == 0 or step == cfg.max_iters
            if step % cfg.log_interval == 0 or evaluating:
                loss_val = flush()  # raises DivergedError before any checkpoint of a NaN state
                now = time.perf_counter()
                tps = (step - it_last) * tokens_per_iter / max(now - t_last, 1e-9)
                if step % cfg.log_interval == 0:
                    write(step, tokens_per_s=tps)
                    say(f"iter {step:6d}  loss {loss_val:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s")
                    t_last, it_last = now, step
            if evaluating:
                vl = evaluate()
                bpb = vl / math.log(2) / bpt if bpt else None
                result.val_losses.append((step, vl))
                write(step, val_loss=vl, **({"bits_per_byte": bpb} if bpb else {}))
                say(f"eval   {step:6d}  val loss {vl:.4f}" + (f"  bits/byte {bpb:.3f}" if bpb else ""))
                result.checkpoint = save_checkpoint(step)
                t_last = time.perf_counter()  # tokens/s measures training, not evaluation and saving
            if fault == f"train:{step}":
                os._exit(137)
    finally:
        if metrics:
            metrics.close()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    result.step = step
    result.wall_s = time.perf_counter() - t0
    done_iters = len(result.train_losses)
    result.tokens_per_s = done_iters * tokens_per_iter / max(result.wall_s, 1e-9)
    result.flops_per_s = flops_per_iter * done_iters / max(result.wall_s, 1e-9)
    if not result.partial and master:
        _plot(out_dir)
        if cfg.sample_tokens > 0:
            result.sample = sample_text(
                model, tokens_dir, cfg.sample_tokens, device=device, seed=cfg.seed, tokenizer_path=tokenizer_path
            )
            (out_dir / "samples.txt").write_text(result.sample + "\n", encoding="utf-8")
            say(f"sample: {result.sample[:500]!r}")
    return result
