"""The ``train`` stage: train the bundled GPT on the input stage's token shards."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from corpusforge.params import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.storage import sha256_file


class TrainStage(Stage):
    """GPT training; parameters are those of ``corpusforge.train.train.TrainConfig`` (nanoGPT-style defaults)."""

    kind: ClassVar[str] = "train"
    produces_documents: ClassVar[bool] = False

    def __init__(
        self,
        *,
        n_layer: Annotated[int, Min(1), Max(96)] = 4,
        n_head: Annotated[int, Min(1), Max(128)] = 4,
        n_embd: Annotated[int, Min(8), Max(16384)] = 128,
        block_size: Annotated[int, Min(2), Max(32768)] = 64,
        dropout: Annotated[float, Min(0), Max(0.9)] = 0.0,
        bias: bool = False,
        pos_encoding: Literal["learned", "sinusoidal"] = "learned",
        activation: Literal["gelu", "gelu_tanh"] = "gelu",
        batch_size: Annotated[int, Min(1)] = 12,
        grad_accum: Annotated[int, Min(1)] = 1,
        max_iters: Annotated[int, Min(1)] = 2000,
        lr: Annotated[float, Min(0)] | None = None,  # None: 0.384 / n_embd, at most 3e-3
        min_lr: Annotated[float, Min(0)] | None = None,  # None: lr / 10
        warmup_iters: Annotated[int, Min(0)] = 100,
        lr_decay_iters: Annotated[int, Min(1)] | None = None,
        weight_decay: Annotated[float, Min(0)] = 0.1,
        beta1: Annotated[float, Min(0), Max(1)] = 0.9,
        beta2: Annotated[float, Min(0), Max(1)] = 0.99,
        grad_clip: Annotated[float, Min(0)] = 1.0,
        eval_interval: Annotated[int, Min(1)] = 250,
        eval_iters: Annotated[int, Min(1)] = 20,
        log_interval: Annotated[int, Min(1)] = 10,
        keep_checkpoints: Annotated[int, Min(1)] = 3,
        sample_tokens: Annotated[int, Min(0)] = 200,
        seed: int = 1337,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        compile: bool = False,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        threads: Annotated[int, Min(1)] | None = None,
        deterministic: bool = False,
    ) -> None:
        self._params = {k: v for k, v in locals().items() if k not in ("self", "__class__")}

    def config(self) -> dict[str, Any]:
        return dict(self._params)

    def parallel(self) -> bool:
        return False

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        """Keep checkpoints: training resumes from the newest good one."""

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        from corpusforge.train.train import TrainConfig, train

        assert ctx.in_dir is not None
        cfg = TrainConfig(**self._params)
        res = train(cfg, ctx.in_dir, ctx.out_dir, should_stop=ctx.stop_requested, quiet=True)
        files = []
        if res.checkpoint is not None:
            for p in sorted(res.checkpoint.iterdir()):
                rel = p.relative_to(ctx.out_dir).as_posix()
                files.append({"name": rel, "rows": 0, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
        first = res.train_losses[0][1] if res.train_losses else None
        last = (
            sum(v for _, v in res.train_losses[-10:]) / max(len(res.train_losses[-10:]), 1)
            if res.train_losses
            else None
        )
        extra = {
            "iters": res.step,
            "tokens_per_s": round(res.tokens_per_s),
            "train_loss": [round(first, 3), round(last, 3)] if first is not None and last is not None else None,
            "val_loss": round(res.val_losses[-1][1], 4) if res.val_losses else None,
            "sample": res.sample,
        }
        return TaskResult(files=files, extra=extra, partial=res.partial)
