"""Where a training process runs: its device and, under ``torchrun``, its place in the data-parallel group.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. With WORLD_SIZE > 1 the processes form one group (gloo on
the CPU, NCCL on GPUs), DDP averages gradients, and the trainer uses the collectives below. A collective is
called by every rank, in the same order, or the run hangs. With one process each of them is a no-op.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from corpusforge.errors import ConfigError

__all__ = ["Dist", "any_rank", "destroy", "gather_json", "init", "mean_over_ranks", "set_grad_sync", "wrap"]


@dataclass(frozen=True)
class Dist:
    world: int  # number of processes
    rank: int
    device: str  # "cpu", "cuda", or "cuda:<LOCAL_RANK>" under DDP

    @property
    def master(self) -> bool:
        """Rank 0: the one process that prints, writes metrics and writes checkpoints."""
        return self.rank == 0


def _pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA GPU is visible", path="device")
    return choice


def init(device_choice: str) -> Dist:
    """This process's device ("auto", "cpu" or "cuda"), joining the process group when WORLD_SIZE > 1."""
    device = _pick_device(device_choice)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        tdist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":  # one GPU per process on this node
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    return Dist(world=world, rank=rank, device=device)


def destroy(d: Dist) -> None:
    if d.world > 1:
        tdist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """``model`` in DDP when there are several processes (it averages gradients in backward), else as is."""
    if d.world == 1:
        return model
    return DistributedDataParallel(model, device_ids=[d.device] if d.device.startswith("cuda") else None)


def set_grad_sync(model: torch.nn.Module, on: bool) -> None:
    """Whether the next backward all-reduces gradients; with gradient accumulation only the last micro-batch's
    should (the others accumulate locally), which saves grad_accum - 1 all-reduces per iteration."""
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = on


def gather_json(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (JSON-serializable), in rank order: JSON bytes in a padded uint8 tensor, no pickle."""
    if world == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    # First the byte counts (int64, shape [1] per rank), then every rank's bytes padded to the longest.
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    tdist.all_gather(sizes, torch.tensor([data.numel()]))
    n = int(max(s.item() for s in sizes))
    padded = torch.zeros(n, dtype=torch.uint8)
    padded[: data.numel()] = data
    bufs = [torch.zeros(n, dtype=torch.uint8) for _ in range(world)]
    tdist.all_gather(bufs, padded)
    return [json.loads(bytes(b[: int(s.item())].tolist())) for b, s in zip(bufs, sizes, strict=True)]


def mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """``t`` averaged elementwise over the ranks, in place (any shape; float)."""
    if world > 1:
        tdist.all_reduce(t)
        t /= world
    return t


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when ``flag`` is true on any: all ranks must stop at the same iteration, or the next
    collective would wait forever for the ones that stopped."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())
