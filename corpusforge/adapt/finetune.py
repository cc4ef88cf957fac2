"""Fine-tuning a trained GPT: ``finetune(base_dir, data, out_dir, cfg)`` and the reward model's ``train_reward``.

One loop for every method (full, LoRA, prompt, prefix) and for the reward model: the base model from its
newest good checkpoint, its tokenizer (the one its token shards were made with), AdamW over the trainable
parameters only, linear warmup then cosine decay to lr / 10, gradient clipping, an evaluation of the whole
validation split and a checkpoint every ``eval_interval`` iterations and at the end.

Checkpoints are the trainer's (``train/checkpoint.py``: safetensors, sha256-checked, written by rename) and hold
only the trainable parameters (an adapter is a few hundred kB), the AdamW moments, the torch RNG, the batch
sampler's state and the step, so a killed run resumes to the same losses as an uninterrupted one. The state
names the base checkpoint and its sha256: an adapter is never applied to another base. ``adapter.json`` (written
last) reports the trainable parameters (count and share of the base model's), the step time and the losses.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn as nn

from corpusforge.adapt.data import Encoder, load_rows, rank_data, sft_data
from corpusforge.adapt.lora import TARGETS, apply_lora
from corpusforge.errors import ConfigError, DivergedError
from corpusforge.params import Max, Min
from corpusforge.storage import atomic_write_json, sha256_file, workdir_lock
from corpusforge.train import checkpoint as ckpt
from corpusforge.train.metrics import MetricsLog
from corpusforge.train.model import GPT, GPTConfig
from corpusforge.train.sample import find_tokenizer

Method = Literal["full", "lora", "prompt", "prefix"]
# Peak learning rates: full fine-tuning moves every weight and wants a small step; the adapters start from
# zero (LoRA's B) or from a few vectors (prompts, prefixes) and take larger ones, as in their papers.
DEFAULT_LR = {"full": 3e-4, "lora": 2e-3, "prompt": 0.1, "prefix": 0.1, "reward": 3e-4}
REPORT = "adapter.json"


@dataclass(kw_only=True)
class FinetuneConfig:
    method: Method = "lora"
    lora_r: Annotated[int, Min(1), Max(1024)] = 8
    lora_alpha: Annotated[float, Min(0)] = 16.0
    lora_dropout: Annotated[float, Min(0), Max(0.9)] = 0.0
    lora_targets: str = ",".join(TARGETS)  # comma-separated ends of module paths
    quantize: Literal["none", "nf4"] = "none"  # "nf4": LoRA on a 4-bit NormalFloat base (QLoRA)
    virtual_tokens: Annotated[int, Min(1)] = 20  # prompt tuning
    prefix_tokens: Annotated[int, Min(0)] = 10  # prefix tuning (0: the base model)
    lr: Annotated[float, Min(0)] | None = None  # None: DEFAULT_LR of the method
    batch_size: Annotated[int, Min(1)] = 8
    max_iters: Annotated[int, Min(1)] = 200
    warmup_iters: Annotated[int, Min(0)] = 10
    weight_decay: Annotated[float, Min(0)] = 0.0
    grad_clip: Annotated[float, Min(0)] = 1.0
    eval_interval: Annotated[int, Min(1)] = 50
    val_fraction: Annotated[float, Min(0), Max(0.5)] = 0.1
    seed: int = 1337
    keep_checkpoints: Annotated[int, Min(1)] = 2
    threads: Annotated[int, Min(1)] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when one is visible


# Where and how fast a run goes, not what it computes: a run may resume on another device or thread count.
PLACEMENT = ("device", "threads")


def same_run(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two configs (``asdict``) describe the same run, whatever device or threads each used."""
    if a is None:
        return False
    return {k: v for k, v in a.items() if k not in PLACEMENT} == {k: v for k, v in b.items() if k not in PLACEMENT}


def _lr(cfg: FinetuneConfig, it: int, peak: float) -> float:
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
    frac = (it - cfg.warmup_iters) / max(cfg.max_iters - cfg.warmup_iters, 1)
    return peak / 10 + 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * (peak - peak / 10)


class _Trainable(nn.Module):
    """What a checkpoint holds: the named trainable parameters (a view; they live in their modules)."""

    def __init__(self, named: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.named = named

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return dict(self.named)


def frozen_bytes(model: nn.Module) -> int:
    """Bytes of the frozen weights (parameters that do not train, and the 4-bit buffers of NF4 layers)."""
    from corpusforge.adapt.nf4 import NF4Linear

    n = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return n + sum(m.nbytes() for m in model.modules() if isinstance(m, NF4Linear))


def base_checkpoint(base_dir: Path) -> ckpt.Loaded:
    base_dir = Path(base_dir)
    folder = base_dir / "checkpoints" if (base_dir / "checkpoints").is_dir() else base_dir
    loaded = ckpt.load_one(folder) if (folder / "state.json").is_file() else ckpt.load_latest(folder)
    if loaded is None:
        raise ConfigError(f"no loadable checkpoint in {folder}", path="CHECKPOINT_DIR")
    return loaded


def load_base(loaded: ckpt.Loaded) -> GPT:
    model = GPT(GPTConfig.from_dict(loaded.state["model"]))
    model.load_state_dict(loaded.model, strict=False)  # lm_head.weight is wte.weight
    return model


def build(model: GPT, cfg: FinetuneConfig) -> tuple[dict[str, nn.Parameter], dict[str, nn.Module]]:
    """Set the model up for ``cfg.method``: (trainable parameters by name, extra modules: prompt or prefix)."""
    extra: dict[str, nn.Module] = {}
    if cfg.method == "full":
        return dict(model.named_parameters()), extra
    if cfg.method == "lora":
        if cfg.quantize == "nf4":
            from corpusforge.adapt.nf4 import quantize_linears

            quantize_linears(model)
        targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
        apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=targets)
        return {n: p for n, p in model.named_parameters() if p.requires_grad}, extra
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.method == "prompt":
        from corpusforge.adapt.prompt import SoftPrompt

        extra["prompt"] = SoftPrompt(model.wte, cfg.virtual_tokens, seed=cfg.seed)
    else:
        from corpusforge.adapt.prefix import PrefixKV

        c = model.cfg
        extra["prefix"] = PrefixKV(
            n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_tokens=cfg.prefix_tokens, seed=cfg.seed
        )
    return {f"{k}.{n}": p for k, m in extra.items() for n, p in m.named_parameters()}, extra


def forward_kwargs(extra: dict[str, nn.Module]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if "prompt" in extra:
        kw["prompt"] = extra["prompt"]()
    if "prefix" in extra:
        kw["prefixes"] = extra["prefix"]()
    return kw


class Loop:
    """The state of one fine-tuning run; ``loss(rows)`` and ``evaluate()`` are the task's (LM or reward)."""

    kind = "finetune"

    def __init__(self, base_dir: Path, data: Path, out_dir: Path, cfg: FinetuneConfig) -> None:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.base = base_checkpoint(base_dir)
        self.base_sha = self.base.state["sha256"]["model.safetensors"]
        tokens_dir = Path(self.base.state.get("tokens_dir", ""))
        tok = find_tokenizer(tokens_dir)
        if tok is None:
            raise ConfigError(f"the tokenizer of {tokens_dir} is not found; the base model's tokens folder moved?")
        manifest = tokens_dir / "manifest.json"
        want = json.loads(manifest.read_text()).get("tokenizer_sha256") if manifest.is_file() else None
        if want and sha256_file(tok) != want:
            raise ConfigError(
                f"the tokenizer {tok} changed since the base model's tokens were written with it: the data would be "
                "tokenized unlike the base model's training text",
                path="CHECKPOINT_DIR",
            )
        self.tokenizer_path = tok
        self.enc = Encoder(tok)
        from corpusforge.train.dist import _pick_device

        self.device = _pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = load_base(self.base)
        self.base_params = sum(p.numel() for p in self.model.parameters())
        self.setup()
        self.rows = load_rows(data)
        self.data = self.make_data(str(data))
        self.train_rows = np.flatnonzero(~self.data.val)
        self.val_rows = np.flatnonzero(self.data.val)
        self.model.to(self.device)  # parameters keep their identity: self.named still names them
        for m in self.extra.values():
            m.to(self.device)
        if hasattr(self, "rm"):
            self.rm.to(self.device)
        self.trainable = [p for p in self.named.values()]
        for p in self.trainable:
            p.requires_grad_(True)
        peak = cfg.lr if cfg.lr is not None else DEFAULT_LR[self.method_name]
        self.peak = peak
        decay = [p for p in self.trainable if p.dim() >= 2]
        flat = [p for p in self.trainable if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": flat, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=peak, betas=(0.9, 0.99), fused=True)
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.ck_dir = self.out_dir / "checkpoints"
        self.step = self._resume()
        self.metrics = MetricsLog(self.out_dir, self.step)
        self.fault = os.environ.get("CORPUSFORGE_FAULT", "")
        self.losses: list[tuple[int, float]] = []
        self.val: list[tuple[int, dict[str, float]]] = []
        self.first_eval: dict[str, float] | None = self.first_eval_resumed

    def put(self, a: np.ndarray) -> torch.Tensor:
        """A batch array as a tensor on the run's device."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t if self.device == "cpu" else t.pin_memory().to(self.device, non_blocking=True)

    # -- the task: language modelling with a method; RewardLoop overrides these
    method_name: str = ""
    first_eval_resumed: dict[str, float] | None = None

    def setup(self) -> None:
        self.method_name = self.cfg.method
        self.named, self.extra = build(self.model, self.cfg)

    def window(self) -> int:
        return self.model.cfg.block_size - (self.cfg.virtual_tokens if self.cfg.method == "prompt" else 0)

    def make_data(self, where: str) -> Any:
        return sft_data(self.rows, self.enc, self.window(), self.cfg.val_fraction, where)

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        x, y = self.put(self.data.x[rows]), self.put(self.data.y[rows])
        return self.model(x, y, **forward_kwargs(self.extra))[1]  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss per target token over the whole validation split; nothing without one (val_fraction 0)."""
        if not len(self.val_rows):
            return {}
        self.model.eval()
        total, count = 0.0, 0
        for i in range(0, len(self.val_rows), 32):
            rows = self.val_rows[i : i + 32]
            n = int((self.data.y[rows] != -100).sum())
            total += float(self.loss(rows)) * n
            count += n
        self.model.train()
        return {"val_loss": total / count}

    # -- resume, checkpoints
    def _resume(self) -> int:
        loaded = ckpt.load_latest(self.ck_dir)
        if loaded is None:
            return 0
        st = loaded.state
        if st.get("base_sha256") != self.base_sha:
            raise ConfigError(
                f"{self.out_dir} was trained on another base checkpoint ({st.get('base_checkpoint')}); use a new --out",
                path="--out",
            )
        if not same_run(st.get("config"), asdict(self.cfg)):
            raise ConfigError(f"{self.out_dir} was made with another config; use a new --out", path="--set")
        for name, t in loaded.model.items():
            self.named[name].data.copy_(t)
        ckpt.restore_optimizer(self.optimizer, loaded.optim, st["optimizer"])
        torch.set_rng_state(loaded.optim["rng.torch"])
        if self.device.startswith("cuda") and "rng.cuda" in loaded.optim:
            torch.cuda.set_rng_state(loaded.optim["rng.cuda"])
        self.rng.bit_generator.state = st["sampler"]
        self.first_eval_resumed = st.get("first_eval")
        return int(st["step"])

    def save(self) -> Path:
        state = {
            "kind": self.kind,
            "method": self.method_name,
            "config": asdict(self.cfg),
            "model": self.model.cfg.to_dict(),
            "base_checkpoint": str(self.base.path),
            "base_sha256": self.base_sha,
            "tokens_dir": self.base.state.get("tokens_dir"),
            "tokenizer_path": str(self.tokenizer_path),
            "sampler": dict(self.rng.bit_generator.state),
            "first_eval": self.first_eval,
        }
        rng = {"rng.cuda": torch.cuda.get_rng_state()} if self.device.startswith("cuda") else {}
        return ckpt.save(
            self.ck_dir,
            self.step,
            _Trainable(self.named),
            self.optimizer,
            state,
            keep=self.cfg.keep_checkpoints,
            extra_tensors=rng,
        )

    # -- the loop
    def run(self, *, quiet: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        say = (lambda *_: None) if quiet else print
        report_path = self.out_dir / REPORT
        if self.step >= cfg.max_iters and report_path.is_file():  # finished before: its report, not a new empty one
            old = json.loads(report_path.read_text())
            if same_run(old.get("config"), asdict(cfg)) and old.get("iters") == self.step:
                say(f"{self.out_dir}: finished before ({self.step} iterations); nothing to do")
                self.metrics.close()
                return old  # type: ignore[no-any-return]
        n_train = sum(p.numel() for p in self.trainable)
        say(
            f"{self.kind} ({self.method_name}) on {self.device}: {n_train:,} trainable parameters "
            f"({n_train / self.base_params:.4%} of {self.base_params:,}); {len(self.train_rows)} training rows, "
            f"{len(self.val_rows)} validation; {self.data.truncated} cut at the window, "
            f"{self.data.dropped} dropped (the prompt filled the window)"
        )
        self.model.train()
        step_times: list[float] = []
        if self.step == 0:
            self.first_eval = self.evaluate()
        while self.step < cfg.max_iters:
            t0 = time.perf_counter()
            lr = _lr(cfg, self.step, self.peak)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            rows = self.rng.choice(self.train_rows, size=cfg.batch_size)
            loss = self.loss(rows)
            if not torch.isfinite(loss):
                raise DivergedError(f"loss is {float(loss)} at iteration {self.step + 1}; the last checkpoint is kept")
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip, foreach=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            step_times.append(time.perf_counter() - t0)
            value = float(loss.detach())
            self.losses.append((self.step, value))
            self.metrics.write(self.step, loss=value, lr=lr)
            if self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters:
                ev = self.evaluate()
                self.val.append((self.step, ev))
                self.metrics.write(self.step, **ev)
                say(
                    f"iter {self.step:5d}/{cfg.max_iters}  loss {value:.4f}  "
                    + "  ".join(f"{k} {v:.4f}" for k, v in ev.items())
                )
                self.save()
            if self.fault == f"finetune:{self.step}":
                os._exit(137)  # as if killed: the exact-resume test
        self.metrics.close()
        report = {
            "kind": self.kind,
            "method": self.method_name,
            "quantize": cfg.quantize if self.method_name == "lora" else "none",
            "device": self.device,
            "trainable_params": n_train,
            "base_params": self.base_params,
            "trainable_share": n_train / self.base_params,
            "frozen_weight_bytes": frozen_bytes(self.model),
            # The median: a shared 2-core machine's stray slow steps do not move it.
            "step_s": float(np.median(step_times)) if step_times else None,
            "iters": self.step,
            "first_eval": self.first_eval,
            "final_eval": self.val[-1][1] if self.val else self.evaluate(),
            "rows": {
                "train": len(self.train_rows),
                "val": len(self.val_rows),
                "truncated": self.data.truncated,
                "dropped": self.data.dropped,
            },
            "base_checkpoint": str(self.base.path),
            "config": asdict(cfg),
        }
        atomic_write_json(report_path, report)
        return report


class RewardLoop(Loop):
    """The reward model: the whole GPT and a scalar head, on ranked completions (``adapt/reward.py``)."""

    kind = "reward"

    def setup(self) -> None:
        from corpusforge.adapt.reward import RewardModel

        self.method_name = "reward"
        self.rm = RewardModel(self.model)
        self.named, self.extra = dict(self.rm.named_parameters()), {}

    def window(self) -> int:
        return self.model.cfg.block_size

    def make_data(self, where: str) -> Any:
        return rank_data(self.rows, self.enc, self.window(), self.cfg.val_fraction, where)

    def _rewards(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.data
        B, K, L = d.idx[rows].shape
        r = self.rm(self.put(d.idx[rows].reshape(B * K, L)), self.put(d.last[rows].reshape(-1)))
        return r.view(B, K), self.put(d.valid[rows])

    def loss(self, rows: np.ndarray) -> torch.Tensor:
        from corpusforge.adapt.reward import pairwise_loss

        return pairwise_loss(*self._rewards(rows))[0]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Pairwise loss and accuracy over every pair of the validation prompts; nothing without any."""
        from corpusforge.adapt.reward import pairwise_loss

        if not len(self.val_rows):
            return {}
        self.rm.eval()
        r, v = self._rewards(self.val_rows)
        loss, acc = pairwise_loss(r, v)
        self.rm.train()
        return {"val_loss": float(loss), "val_pair_accuracy": float(acc)}


def finetune(base_dir: Path, data: Path, out_dir: Path, cfg: FinetuneConfig, *, quiet: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(out_dir):
        return Loop(base_dir, data, out_dir, cfg).run(quiet=quiet)


def train_reward(
    base_dir: Path, data: Path, out_dir: Path, cfg: FinetuneConfig, *, quiet: bool = False
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(out_dir):
        return RewardLoop(base_dir, data, out_dir, cfg).run(quiet=quiet)


# ---------------------------------------------------------------------------------------- using the results
def load_adapted(out_dir: Path) -> tuple[Any, dict[str, nn.Module], dict[str, Any]]:
    """(model or reward model, extra modules, state) of a fine-tuning folder's newest good checkpoint, on its
    base model (checked by sha256), in eval mode."""
    loaded = ckpt.load_latest(Path(out_dir) / "checkpoints")
    if loaded is None:
        raise ConfigError(f"no loadable checkpoint in {out_dir}/checkpoints", path="DIR")
    st = loaded.state
    base = ckpt.load_one(Path(st["base_checkpoint"]))
    if base.state["sha256"]["model.safetensors"] != st["base_sha256"]:
        raise ConfigError(f"the base checkpoint {st['base_checkpoint']} changed since {out_dir} was trained on it")
    model = load_base(base)
    cfg = FinetuneConfig(**st["config"])
    if st["kind"] == "reward":
        from corpusforge.adapt.reward import RewardModel

        rm = RewardModel(model)
        rm.load_state_dict(loaded.model, strict=False)
        return rm.eval(), {}, st
    named, extra = build(model, cfg)
    for name, t in loaded.model.items():
        named[name].data.copy_(t)
    model.eval()
    for m in extra.values():
        m.eval()
    return model, extra, st


def merge(out_dir: Path, dest: Path) -> Path:
    """A LoRA folder's adapter folded into its base: a plain checkpoint folder (``dest/checkpoints``) that
    ``corpusforge sample`` and ``corpusforge export`` read like any trained model."""
    from corpusforge.adapt.lora import merge_lora

    model, _, st = load_adapted(out_dir)
    if st["method"] != "lora":
        raise ConfigError(f"{out_dir} holds a {st['method']} adapter; only LoRA merges into the weights", path="DIR")
    merged = merge_lora(model)
    if st["config"].get("quantize") == "nf4":  # the untouched layers are still 4-bit: back to float
        from corpusforge.adapt.nf4 import NF4Linear

        for name, m in list(merged.named_modules()):
            if isinstance(m, NF4Linear):
                lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(m.dequantize())
                *up, leaf = name.split(".")
                parent: nn.Module = merged
                for part in up:
                    parent = getattr(parent, part)
                setattr(parent, leaf, lin)
    dest = Path(dest)
    state = {"model": st["model"], "tokens_dir": st["tokens_dir"], "merged_from": str(out_dir), "train": {}}
    opt = torch.optim.AdamW(merged.parameters(), lr=0.0)  # an empty optimizer state: a merged model starts fresh
    ckpt.save(dest / "checkpoints", 0, merged, opt, state, keep=1)
    atomic_write_json(dest / "merged.json", {"from": str(out_dir), "base_checkpoint": st["base_checkpoint"]})
    return dest


def score(out_dir: Path, rows: list[dict[str, Any]]) -> list[list[float]]:
    """Rewards of each row's completions (``{"prompt", "completions"}``) under a reward folder's model."""
    rm, _, st = load_adapted(out_dir)
    if st["kind"] != "reward":
        raise ConfigError(f"{out_dir} is not a reward model (corpusforge reward makes one)", path="DIR")
    enc = Encoder(Path(st["tokenizer_path"]))
    data = rank_data(rows, enc, rm.gpt.cfg.block_size, 0.0, "rows", drop_full=False)
    with torch.no_grad():
        B, K, L = data.idx.shape
        r = rm(torch.from_numpy(data.idx.reshape(B * K, L)), torch.from_numpy(data.last.reshape(-1))).view(B, K)
    return [[float(x) for x, ok in zip(r[i], data.valid[i], strict=True) if ok] for i in range(B)]


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
