"""The ``train`` stage: train the bundled GPT on the input stage's token shards."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.storage import sha256_file
from corpusforge.train.config import TrainConfig


class TrainStage(Stage):
    """GPT training; the parameters are the fields of ``TrainConfig`` (nanoGPT-style defaults)."""

    kind: ClassVar[str] = "train"
    schema: ClassVar[type | None] = TrainConfig
    runtime_params: ClassVar[frozenset[str]] = frozenset({"verify_data"})  # checks, not the model

    def __init__(self, **params: Any) -> None:
        # As given (validated against TrainConfig by the recipe); TrainConfig fills in lr and min_lr.
        self._params = dict(params)

    def config(self) -> dict[str, Any]:
        """Every field with its given value or default (lr None stays None), except ``runtime_params``."""
        return {
            f.name: self._params.get(f.name, f.default)
            for f in fields(TrainConfig)
            if f.name not in self.runtime_params
            # heldout absent when unset, as in the stages made before it existed (their hash stays the same)
            and not (f.name == "heldout" and self._params.get("heldout") is None)
        }

    def parallel(self) -> bool:
        return False

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        """Keep checkpoints: training resumes from the newest good one."""

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        from corpusforge.train.train import train

        assert ctx.in_dir is not None
        params = dict(self._params)
        if params.get("heldout") in ctx.stage_dirs:  # a stage of the recipe: its folder
            params["heldout"] = str(ctx.stage_dirs[params["heldout"]])
        cfg = TrainConfig(**params)
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
            "heldout_bpb": round(res.heldout_bpb[-1][1], 5) if res.heldout_bpb else None,
            "sample": res.sample,
        }
        return TaskResult(files=files, extra=extra, partial=res.partial)
