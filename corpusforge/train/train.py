"""The training loop: token shards → GPT, with exact resume, evaluation, metrics and sampling.

One ``TrainConfig`` (``train/config.py``) describes a run. ``train(cfg, tokens_dir, out_dir)`` reads as
set-up → loop → finish. The set-up (``Run``) resumes from the newest good checkpoint in
``out_dir/checkpoints`` (refusing changed training data unless ``force``). The loop runs to ``max_iters``:
per iteration ``grad_accum`` micro-batches, gradient clipping, AdamW with decay/no-decay groups, linear
warmup then cosine decay to ``min_lr``. Every ``eval_interval`` iterations (and at the end) it measures val
loss and bits per byte and saves a checkpoint. A NaN/inf loss raises ``DivergedError`` before any
checkpoint of that state is written. The finish draws ``loss.png`` and writes a sample.

Exact resume: the data cursor (sampler RNG), the torch RNG (dropout), the optimizer moments, the fp16 loss
scale and the step are all in the checkpoint; evaluation draws from its own generator, so it never shifts
the training batches.

Per-step losses stay on the device and are read back every ``log_interval`` iterations (one host sync, and
one all-reduce under DDP, per interval); the NaN check runs on each read-back and always before a checkpoint.

Data parallel (``train/dist.py``): under ``torchrun`` each process draws its own windows (seed + rank), DDP
averages the gradients, rank 0 prints and writes metrics and checkpoints, and the checkpoint holds every
rank's data cursor.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from corpusforge.errors import ConfigError, DivergedError
from corpusforge.progress import Progress, format_eta
from corpusforge.storage import workdir_lock
from corpusforge.tokens.read import expect_tokens_folder
from corpusforge.train import checkpoint as ckpt
from corpusforge.train import dist
from corpusforge.train.config import TrainConfig
from corpusforge.train.data import TokenData, bytes_per_token, data_fingerprint
from corpusforge.train.heldout import HeldoutSet
from corpusforge.train.metrics import MetricsLog, plot_losses
from corpusforge.train.model import GPT, GPTConfig
from corpusforge.train.precision import amp_dtype, autocast
from corpusforge.train.sample import sample_text

__all__ = ["TrainResult", "lr_at", "train"]


@dataclass
class TrainResult:
    partial: bool  # stopped early (signal or deadline); a checkpoint was written, run again to resume
    step: int  # iterations done
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss in nats/token)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    heldout_bpb: list[tuple[int, float]] = field(default_factory=list)  # (step, bits/byte of cfg.heldout)
    tokens_per_s: float = 0.0  # over the whole loop, evaluation included
    wall_s: float = 0.0
    sample: str = ""
    checkpoint: Path | None = None  # the last one written (rank 0 only)
    flops_per_s: float = 0.0  # model FLOPs (6N + 12LCT per token) per second of the loop's wall time


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


def _noop(*_: Any, **__: Any) -> None:
    return None


class Run:
    """One process's training state between iterations. The constructor is the set-up: device and process
    group, model, optimizer, data, and the resume from the newest good checkpoint."""

    def __init__(self, cfg: TrainConfig, tokens_dir: Path, out_dir: Path, *, force: bool, quiet: bool) -> None:
        self.cfg, self.tokens_dir, self.out_dir = cfg, tokens_dir, out_dir
        manifest = json.loads((tokens_dir / "manifest.json").read_text())
        self.dist = dist.init(cfg.device)
        self.device = self.dist.device
        if self.dist.master:
            out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.say: Callable[..., None] = print if (self.dist.master and not quiet) else _noop
        self.amp = amp_dtype(self.device, cfg.dtype)
        # fp16 needs loss scaling (its exponent range is narrow); bf16 and float32 do not.
        self.scaler = torch.amp.GradScaler(self.device.split(":")[0], enabled=self.amp == torch.float16)
        torch.manual_seed(cfg.seed)  # the initial weights; dropout draws from the same generator afterwards
        self.mcfg = cfg.model_config(int(manifest["vocab_size"]))
        self.model = GPT(self.mcfg).to(self.device)
        # Fused AdamW: one kernel per step over all parameters (CPU and CUDA); the update is the same AdamW.
        opt_kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "fused": True}
        self.optimizer = torch.optim.AdamW(self.model.param_groups(cfg.weight_decay), **opt_kwargs)
        # Each rank draws its own windows; shards are checked against the manifest's checksum before use.
        rank = self.dist.rank
        self.train_data = TokenData(tokens_dir, "train", cfg.block_size, cfg.seed + rank, verify=cfg.verify_data)
        self.fingerprint = data_fingerprint(tokens_dir)
        self.ck_dir = out_dir / "checkpoints"
        self.step = self._resume(force)  # iterations done
        val_split = "val" if manifest.get("tokens", {}).get("val", 1) > cfg.block_size + 1 else "train"
        self.val_data = TokenData(tokens_dir, val_split, cfg.block_size, cfg.seed + 1, verify=cfg.verify_data)
        self.bpt = bytes_per_token(tokens_dir)
        # A held-out document set scored whole at every evaluation (bits per byte: ``train/heldout.py``).
        self.heldout = (
            HeldoutSet(
                Path(cfg.heldout),
                Path(manifest.get("tokenizer_path") or ""),
                cfg.block_size,
                tokenizer_sha256=manifest.get("tokenizer_sha256"),
            )
            if cfg.heldout
            else None
        )
        # Training's forward passes go through run_model (compiled and/or DDP-wrapped, same parameters);
        # evaluation, clipping and checkpoints use self.model.
        # (torch.compile of a Module returns an OptimizedModule, a Module, though it is typed as a callable.)
        compiled = cast(torch.nn.Module, torch.compile(self.model)) if cfg.compile else self.model
        self.run_model = dist.wrap(compiled, self.dist)
        self.metrics = MetricsLog(out_dir, self.step) if self.dist.master else None
        self.result = TrainResult(partial=False, step=self.step)
        self.tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.grad_accum * self.dist.world  # all ranks
        self.flops_per_iter = self.model.flops_per_token() * self.tokens_per_iter
        # Losses of the iterations not yet read back: (step, lr, mean loss as a 0-d tensor on the device).
        self.pending: list[tuple[int, float, torch.Tensor]] = []
        # Test hooks (RELIABILITY items 34, 35, 38): "train:K" exits hard after iteration K; "train_save:K"
        # exits hard inside the save of the checkpoint at step K, once its weights are in the temp folder;
        # "train_nan:K" / "train_inf:K" make iteration K's loss NaN / inf.
        self.fault = os.environ.get("CORPUSFORGE_FAULT", "")
        world = f" × {self.dist.world} processes" if self.dist.world > 1 else ""
        self.say(
            f"model: {self.model.num_params() / 1e6:.2f} M parameters, {self.mcfg.n_layer} layers, width "
            f"{self.mcfg.n_embd}; device {self.device}{world}; {self.tokens_per_iter} tokens/iteration"
        )

    def _resume(self, force: bool) -> int:
        """Load the newest good checkpoint into model, optimizer, RNGs and data cursor; its step, or 0."""
        loaded = ckpt.load_latest(self.ck_dir, clean=self.dist.master, force=force)
        if loaded is None:
            return 0
        st = loaded.state
        if st.get("data_fingerprint") != self.fingerprint and not force:
            raise ConfigError(
                f"the training data in {self.tokens_dir} changed since checkpoint {loaded.path.name} was "
                "written; use --force to resume on the new data, or a new --out folder",
                path="tokens",
            )
        if GPTConfig.from_dict(st["model"]) != self.mcfg:
            raise ConfigError(
                f"checkpoint {loaded.path} was made with another model config; use a new --out", path="model"
            )
        states = st.get("data_states") or [st["data_state"]]
        if len(states) != self.dist.world:
            raise ConfigError(
                f"checkpoint {loaded.path.name} was written by {len(states)} process(es), this run has "
                f"{self.dist.world}; resume with the same number of processes",
                path="WORLD_SIZE",
            )
        self.model.load_state_dict(loaded.model, strict=False)  # lm_head.weight is wte.weight
        ckpt.restore_optimizer(self.optimizer, loaded.optim, st["optimizer"])
        torch.set_rng_state(loaded.optim["rng.torch"])
        if self.device.startswith("cuda") and "rng.cuda" in loaded.optim:
            torch.cuda.set_rng_state(loaded.optim["rng.cuda"])
        self.train_data.set_state(states[self.dist.rank])
        if self.scaler.is_enabled() and "grad_scaler" in st:
            self.scaler.load_state_dict(st["grad_scaler"])
        self.say(f"resumed from {loaded.path} at step {int(st['step'])}")
        return int(st["step"])

    def iteration(self) -> float:
        """One optimizer step over grad_accum micro-batches of (batch_size, block_size) windows; its lr."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        poison = self._poison(self.step + 1)
        for micro in range(cfg.grad_accum):
            x, y = self.train_data.batch(cfg.batch_size, self.device)
            dist.set_grad_sync(self.run_model, micro == cfg.grad_accum - 1)
            with autocast(self.device, self.amp):
                _, loss = self.run_model(x, y)  # 0-d: mean cross-entropy of the micro-batch, nats/token
            if poison is not None:
                loss = loss * poison  # through the backward pass the weights diverge too, as in a real blow-up
            self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (a no-op unless fp16)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.pending.append((self.step, lr, loss_sum / cfg.grad_accum))
        return lr

    def _poison(self, step: int) -> float | None:
        """The NaN or inf that the test hook multiplies iteration ``step``'s loss by; None: no fault."""
        for kind, value in (("train_nan", math.nan), ("train_inf", math.inf)):
            if self.fault == f"{kind}:{step}":
                return value
        return None

    def write(self, step: int, **values: float) -> None:
        if self.metrics is not None:
            self.metrics.write(step, **values)

    def flush(self) -> float:
        """Read back the pending losses (averaged over ranks), check them, write metrics; the last loss.

        Raises ``DivergedError`` on a NaN/inf loss, so a NaN state is never checkpointed."""
        if not self.pending:
            return 0.0
        vals = dist.mean_over_ranks(torch.stack([p[2] for p in self.pending]).float(), self.dist.world)
        host = vals.tolist()  # (len(pending),) floats: the one host sync of the interval
        for (at, lr, _), v in zip(self.pending, host, strict=True):
            if not math.isfinite(v):
                kept = ckpt.list_checkpoints(self.ck_dir)
                raise DivergedError(
                    f"loss is {v} at iteration {at}; stopped, the last good checkpoint is kept"
                    + (f" ({kept[0].name})" if kept else "")
                )
            self.result.train_losses.append((at, v))
            self.write(at, loss=v, lr=lr)
        self.pending.clear()
        return host[-1]

    def evaluate(self) -> float:
        """Mean val loss (nats/token) over ``eval_iters`` batches; the same batches at every evaluation."""
        cfg = self.cfg
        self.model.eval()
        self.val_data.rng = np.random.Generator(np.random.PCG64(cfg.seed + 7))
        losses = torch.zeros(cfg.eval_iters, device=self.device)
        with torch.no_grad(), autocast(self.device, self.amp):
            for k in range(cfg.eval_iters):
                x, y = self.val_data.batch(cfg.batch_size, self.device)
                losses[k] = self.model(x, y)[1]
        self.model.train()
        return float(losses.mean())

    def save_checkpoint(self) -> Path | None:
        """A checkpoint at the current step, written by rank 0 (its folder; None on the other ranks)."""
        data_states = dist.gather_json(self.train_data.state(), self.dist.world)  # a collective: every rank
        if not self.dist.master:
            return None
        extra_rng = {"rng.cuda": torch.cuda.get_rng_state()} if self.device.startswith("cuda") else {}
        state = {
            "model": self.mcfg.to_dict(),
            "train": asdict(self.cfg),
            "data_fingerprint": self.fingerprint,
            "data_states": data_states,
            "world_size": self.dist.world,
            "tokens_dir": str(self.tokens_dir.resolve()),
            "precision": str(self.amp or torch.float32).removeprefix("torch."),
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
        }
        return ckpt.save(
            self.ck_dir,
            self.step,
            self.model,
            self.optimizer,
            state,
            keep=self.cfg.keep_checkpoints,
            extra_tensors=extra_rng,
            crash_after_weights=self.fault == f"train_save:{self.step}",
        )

    def evaluate_and_save(self) -> None:
        vl = self.evaluate()
        bpb = vl / math.log(2) / self.bpt if self.bpt else None  # nats/token → bits/token → bits/byte
        self.result.val_losses.append((self.step, vl))
        held = {}
        if self.heldout is not None and self.dist.master:
            held["heldout_bpb"] = self.heldout.bits_per_byte(self.model, self.device, self.amp)
            self.result.heldout_bpb.append((self.step, held["heldout_bpb"]))
        self.write(self.step, val_loss=vl, **({"bits_per_byte": bpb} if bpb else {}), **held)
        self.say(
            f"eval   {self.step:6d}  val loss {vl:.4f}"
            + (f"  bits/byte {bpb:.3f}" if bpb else "")
            + (f"  held-out bits/byte {held['heldout_bpb']:.4f}" if held else "")
        )
        self.result.checkpoint = self.save_checkpoint()

    def stop_requested(self, should_stop: Callable[[], bool]) -> bool:
        """Whether to stop before this iteration. Under DDP every rank must agree (an all-reduce), so it is
        asked only every ``log_interval`` iterations there."""
        if self.dist.world > 1 and self.step % self.cfg.log_interval != 0:
            return False
        return dist.any_rank(bool(should_stop()), self.dist)

    def stop(self) -> None:
        """A clean early stop: pending losses read back, a checkpoint, a partial result."""
        self.flush()
        self.result.checkpoint = self.save_checkpoint()
        self.result.partial = True
        self.say(f"stopped at iteration {self.step}; checkpoint written, run again to resume")

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        dist.destroy(self.dist)

    def finish(self, wall_s: float, tokenizer_path: Path | None) -> TrainResult:
        """Throughput figures; after a complete run also loss.png and a sample (rank 0)."""
        res, cfg = self.result, self.cfg
        res.step, res.wall_s = self.step, wall_s
        done_iters = len(res.train_losses)  # iterations of this call, not those before the resume
        res.tokens_per_s = done_iters * self.tokens_per_iter / max(wall_s, 1e-9)
        res.flops_per_s = done_iters * self.flops_per_iter / max(wall_s, 1e-9)
        if res.partial or not self.dist.master:
            return res
        plot_losses(self.out_dir)
        if cfg.sample_tokens > 0:
            res.sample = sample_text(
                self.model,
                self.tokens_dir,
                cfg.sample_tokens,
                device=self.device,
                seed=cfg.seed,
                tokenizer_path=tokenizer_path,
            )
            (self.out_dir / "samples.txt").write_text(res.sample + "\n", encoding="utf-8")
            self.say(f"sample: {res.sample[:500]!r}")
        return res


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
    """Train to ``cfg.max_iters``, resuming from ``out_dir/checkpoints``; stops cleanly when ``should_stop()``.

    Rank 0 holds ``out_dir/.lock`` for the whole run: a second trainer on the same folder raises
    ``LockedError`` (exit 3) before it reads or writes anything.
    """
    expect_tokens_folder(Path(tokens_dir))
    out_dir = Path(out_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes, so only it locks
        return _train(cfg, Path(tokens_dir), out_dir, force, should_stop, quiet, tokenizer_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(out_dir):
        return _train(cfg, Path(tokens_dir), out_dir, force, should_stop, quiet, tokenizer_path)


def _train(
    cfg: TrainConfig,
    tokens_dir: Path,
    out_dir: Path,
    force: bool,
    should_stop: Callable[[], bool],
    quiet: bool,
    tokenizer_path: Path | None,
) -> TrainResult:
    run = Run(cfg, tokens_dir, out_dir, force=force, quiet=quiet)
    t0 = time.perf_counter()
    # tokens/s of a log interval: iterations since it_last over seconds since t_last; t_last moves past each
    # evaluation and checkpoint, so only training is timed.
    t_last, it_last = t0, run.step
    first_step = run.step
    # The progress line (corpusforge.progress: a live bar on a terminal, a log line every interval otherwise),
    # fed at each log interval; the ETA is from the average pace since the start, evaluations included.
    progress = Progress("train", unit="iterations", total=cfg.max_iters, start=run.step) if run.dist.master else None
    run.model.train()
    try:
        while run.step < cfg.max_iters:
            if run.stop_requested(should_stop):
                run.stop()
                break
            lr = run.iteration()
            step = run.step
            logging_now = step % cfg.log_interval == 0
            evaluating = step % cfg.eval_interval == 0 or step == cfg.max_iters
            if logging_now or evaluating:
                loss = run.flush()  # raises DivergedError before any checkpoint of a NaN state
                if logging_now:
                    now = time.perf_counter()
                    tps = (step - it_last) * run.tokens_per_iter / max(now - t_last, 1e-9)
                    run.write(step, tokens_per_s=tps)
                    eta = (cfg.max_iters - step) * (now - t0) / max(step - first_step, 1)
                    run.say(
                        f"iter {step:6d}/{cfg.max_iters}  loss {loss:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s  "
                        f"ETA {format_eta(eta)}"
                    )
                    if progress is not None:
                        progress.update(step, extra=f"loss {loss:.4f}, {tps:,.0f} tokens/s")
                    t_last, it_last = now, step
            if evaluating:
                run.evaluate_and_save()
                t_last = time.perf_counter()
            if run.fault == f"train:{step}":
                os._exit(137)  # as if killed: no flush, no cleanup (the exact-resume test)
    finally:
        run.close()
    return run.finish(time.perf_counter() - t0, tokenizer_path)
