"""``TrainConfig``: the parameters of one training run, and the schema of the ``train`` stage and of
``corpusforge train --set``. Torch-free, so a recipe is validated without the ``train`` extra installed.

Defaults follow nanoGPT's shakespeare-char CPU example, except the width-scaled peak learning rate
(``auto_lr``). The bounds (``Min``/``Max``) are checked by ``corpusforge.params.validate_kwargs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from corpusforge.params import Max, Min

if TYPE_CHECKING:
    from corpusforge.train.model import GPTConfig

__all__ = ["NONE_MEANS", "TrainConfig", "auto_lr"]


def auto_lr(n_embd: int) -> float:
    """Default peak learning rate for a model of width ``n_embd``: 0.384 / n_embd, at most 3e-3."""
    return min(3e-3, 0.384 / n_embd)


# What a field left at None stands for (``corpusforge train --help`` shows these as the defaults).
NONE_MEANS = {
    "lr": "0.384 / n_embd, at most 3e-3",
    "min_lr": "lr / 10",
    "lr_decay_iters": "max_iters",
    "threads": "torch's default",
}


@dataclass(kw_only=True)
class TrainConfig:
    # model
    n_layer: Annotated[int, Min(1), Max(96)] = 4
    n_head: Annotated[int, Min(1), Max(128)] = 4
    n_embd: Annotated[int, Min(8), Max(16384)] = 128
    block_size: Annotated[int, Min(2), Max(32768)] = 64  # tokens per training window
    dropout: Annotated[float, Min(0), Max(0.9)] = 0.0
    bias: bool = False
    pos_encoding: Literal["learned", "sinusoidal"] = "learned"
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    # optimization; one iteration is grad_accum micro-batches of batch_size windows (per process)
    batch_size: Annotated[int, Min(1)] = 12
    grad_accum: Annotated[int, Min(1)] = 1
    max_iters: Annotated[int, Min(1)] = 2000
    # None: the peak rate scales with 1/width, 0.384 / n_embd capped at 3e-3 (1e-3 at width 384 as nanoGPT's
    # shakespeare-char config, 5e-4 at GPT-2 small's 768, 3e-3 at 128, where nanoGPT's 1e-3 under-trains:
    # benchmarks/train.py); min_lr None: lr / 10. Both are filled in by __post_init__.
    lr: Annotated[float, Min(0)] | None = None
    min_lr: Annotated[float, Min(0)] | None = None
    warmup_iters: Annotated[int, Min(0)] = 100
    lr_decay_iters: Annotated[int, Min(1)] | None = None  # None: max_iters
    weight_decay: Annotated[float, Min(0)] = 0.1
    beta1: Annotated[float, Min(0), Max(1)] = 0.9
    beta2: Annotated[float, Min(0), Max(1)] = 0.99
    grad_clip: Annotated[float, Min(0)] = 1.0  # max global gradient norm; 0: no clipping
    # evaluation, logging, checkpoints (intervals in iterations)
    eval_interval: Annotated[int, Min(1)] = 250
    eval_iters: Annotated[int, Min(1)] = 20
    log_interval: Annotated[int, Min(1)] = 10
    keep_checkpoints: Annotated[int, Min(1)] = 3
    sample_tokens: Annotated[int, Min(0)] = 200  # tokens generated after training; 0: no sample
    # A finished document folder (or, in a recipe, a stage name) scored whole at every evaluation: held-out
    # bits per byte in metrics.jsonl (``heldout_bpb``). What ``corpusforge ablate`` compares variants on.
    heldout: str | None = None
    seed: int = 1337
    # where and how it runs
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    threads: Annotated[int, Min(1)] | None = None  # torch CPU threads; None: torch's default
    deterministic: bool = False
    # the checksum of every token shard against its manifest before training starts. It cannot change the output,
    # so the train stage leaves it out of its config hash.
    verify_data: bool = True

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = auto_lr(self.n_embd)
        if self.min_lr is None:
            self.min_lr = self.lr / 10

    def model_config(self, vocab_size: int) -> GPTConfig:
        from corpusforge.train.model import GPTConfig  # torch: only when a model is built

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
