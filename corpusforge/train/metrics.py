"""Training metrics: ``metrics.jsonl`` (one JSON object per line, keyed by ``step``), tensorboard event files
when tensorboard is installed, and ``loss.png`` drawn from the JSON lines when matplotlib is.

Keys: ``loss`` and ``val_loss`` (cross-entropy, nats/token), ``lr``, ``tokens_per_s`` (training only, not
evaluation), ``bits_per_byte`` (val loss per byte of the original text, when the tokenizer reports bytes/token).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corpusforge.storage import commit_temp, temp_path

__all__ = ["MetricsLog", "plot_losses"]


class MetricsLog:
    """Appends to ``out_dir/metrics.jsonl`` (and tensorboard); written by rank 0 only."""

    def __init__(self, out_dir: Path, resume_step: int) -> None:
        self.path = out_dir / "metrics.jsonl"
        # Drop lines past the step we resume from: they belong to work the checkpoint does not contain.
        if self.path.is_file():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self.tb = None

    def write(self, step: int, **values: float) -> None:
        # Flushed per line: a killed run keeps every line up to its last iteration.
        self.fh.write(json.dumps({"step": step, **values}) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def plot_losses(out_dir: Path) -> None:
    """``out_dir/loss.png``: train and val loss against iteration, from metrics.jsonl (skipped without matplotlib)."""
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
    final = out_dir / "loss.png"
    tmp = temp_path(final)
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    commit_temp(tmp, final)  # a reader never sees half a PNG
