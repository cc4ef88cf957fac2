"""Checkpoints without pickles: safetensors for tensors, JSON for everything else, written atomically.

``checkpoints/step-000500/`` holds ``model.safetensors`` (weights), ``optim.safetensors`` (AdamW moments and
the torch RNG state as a uint8 tensor) and ``state.json`` (step, configs, data cursor, scheduler position,
sha256 of the two tensor files). A checkpoint is built in ``step-000500.tmp/`` and renamed into place, so a
kill during the save leaves the previous checkpoint intact and the partial one is ignored (and removed).
Loading verifies the sha256 sums; a corrupt or unreadable checkpoint is reported and the previous one is
used. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corpusforge.errors import ShardError
from corpusforge.storage import atomic_write_json, commit_temp_dir, sha256_file

log = logging.getLogger(__name__)

PREFIX = "step-"


@dataclass
class Loaded:
    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]


def _optim_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("rng."):
            continue
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    keep: int = 3,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    crash_after_weights: bool = False,
) -> Path:
    """Write the checkpoint of ``step`` (temp folder, then rename); keep the newest ``keep``.

    ``crash_after_weights``: a test hook (RELIABILITY item 35) that exits the process hard, as ``kill -9``
    would, once the weights are in the temp folder and before the rest of the checkpoint is.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:07d}"
    tmp = folder / f"{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(tmp / "model.safetensors"))
    if crash_after_weights:
        os._exit(137)
    otensors, ometa = _optim_tensors(optimizer)
    otensors["rng.torch"] = torch.get_rng_state()
    otensors.update(extra_tensors or {})  # e.g. "rng.cuda"
    save_file(otensors, str(tmp / "optim.safetensors"))
    full = dict(state) | {
        "step": step,
        "optimizer": ometa,
        "sha256": {n: sha256_file(tmp / n) for n in ("model.safetensors", "optim.safetensors")},
    }
    atomic_write_json(tmp / "state.json", full)
    commit_temp_dir(tmp, final)
    for old in list_checkpoints(folder)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, newest first (``*.tmp`` folders of interrupted saves are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp")),
        key=lambda p: p.name,
        reverse=True,
    )


# What a pickle starts with: the PROTO opcode (0x80) and protocol 2–5; torch.save writes a zip holding one.
_PICKLE_HEADS = tuple(bytes([0x80, p]) for p in range(2, 6)) + (b"PK\x03\x04",)


def refuse_pickle(path: Path) -> None:
    """Raise ValueError when the tensor file ``path`` is a pickle, from its first bytes (never unpickled)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_PICKLE_HEADS):
        raise ValueError(
            f"{path} is a Python pickle, not safetensors: refused without loading it, because unpickling can run "
            "arbitrary code. Checkpoints hold tensors only as safetensors"
        )


def load_one(path: Path) -> Loaded:
    """Load and verify one checkpoint; raises ValueError when it is corrupt."""
    from safetensors.torch import load_file

    try:
        for name in ("model.safetensors", "optim.safetensors"):
            refuse_pickle(path / name)
        state = json.loads((path / "state.json").read_text())
        for name, digest in state["sha256"].items():
            if sha256_file(path / name) != digest:
                raise ValueError(f"{path / name}: sha256 mismatch (corrupt)")
        model = load_file(str(path / "model.safetensors"))
        optim = load_file(str(path / "optim.safetensors"))
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from exc
    except ValueError:  # ours: a pickle, a sha256 mismatch; already says where and what
        raise
    except Exception as exc:  # safetensors raises its own error types on a bad header
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from exc
    return Loaded(path, state, model, optim)


def load_latest(folder: Path, *, clean: bool = True, force: bool = False) -> Loaded | None:
    """The newest checkpoint that loads and verifies; corrupt ones are reported and skipped. None: there is no
    checkpoint. Every one corrupt raises ``ShardError`` (nothing to resume from), unless ``force``: then None.

    ``clean`` removes the ``*.tmp`` folders of interrupted saves (only the process that writes checkpoints
    should: under DDP, rank 0).
    """
    for tmp in folder.glob(f"{PREFIX}*.tmp") if (clean and folder.is_dir()) else []:
        shutil.rmtree(tmp, ignore_errors=True)  # an interrupted save
    problems: list[str] = []
    for path in list_checkpoints(folder):
        try:
            loaded = load_one(path)
        except ValueError as exc:
            problems.append(str(exc))
            log.error("%s", exc)
            continue
        if problems:
            print(f"warning: {len(problems)} newer checkpoint(s) corrupt ({problems[0]}); resuming from {path.name}")
        return loaded
    if not problems:
        return None
    if force:
        print(f"warning: every checkpoint in {folder} is corrupt; --force: training starts again from step 0")
        return None
    raise ShardError(
        f"every checkpoint in {folder} is corrupt ({'; '.join(problems[:2])}): nothing to resume from. "
        "Rerun with --force to train from step 0, or restore the checkpoints"
    )
