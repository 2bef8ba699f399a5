"""Where a process stands under torchrun: device, rank, world size, process group, sharding."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sipe.engine.env import torchrun_env
from sipe.errors import UsageError

__all__ = [
    "DEVICE_CHOICES",
    "DistInfo",
    "barrier",
    "is_main_process",
    "rank_and_world",
    "resolve_device",
    "setup_distributed",
    "shard_indices",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` and ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` a device name selects for process ``local_rank``.

    ``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda`` (no index): the
    process's own GPU, ``cuda:LOCAL_RANK``; ``cuda:N`` and ``cpu`` as given. A CUDA device that this
    machine does not have raises ``ValueError`` here rather than at the first tensor moved to it.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use {DEVICE_CHOICES}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {device!r} needs CUDA, which is not available here; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % count)
        elif dev.index >= count:
            raise UsageError(f"device {device!r} does not exist: this machine has {count} CUDA device(s)")
    return dev


def setup_distributed(device: str = "auto") -> DistInfo:
    """Read the torchrun environment and initialise ``torch.distributed`` when ``WORLD_SIZE`` > 1.

    The backend is NCCL on CUDA and gloo on CPU. Safe to call repeatedly: an existing process
    group is reused. Without torchrun this returns rank 0 of 1 and initialises nothing.
    """
    rank, world, local_rank = torchrun_env()
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            rank=rank,
            world_size=world,
            device_id=dev if dev.type == "cuda" else None,
            # Other ranks wait at a barrier while rank 0 validates and writes checkpoints.
            timeout=datetime.timedelta(minutes=60),
        )
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_main_process() -> bool:
    """True on rank 0 (or outside torchrun)."""
    return rank_and_world()[0] == 0


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: from the process group when initialised, else from the
    torchrun environment ((0, 1) outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env = torchrun_env()
    return env.rank, env.world_size


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The dataset indices of one rank: rank r takes every world-th item starting at r."""
    return list(range(rank, n, world))
