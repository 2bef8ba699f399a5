"""Rank, world size and local rank from the torchrun environment, torch-free: the command line reads
them before torch loads (to print a user error once), and :mod:`sipe.engine.distributed` builds on them.
The one place that reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["TorchrunEnv", "torchrun_env"]


class TorchrunEnv(NamedTuple):
    """This process's place under torchrun: ``rank`` of ``world_size``, and its ``local_rank`` on its machine."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> TorchrunEnv:
    """The torchrun variables of this process; (0, 1, 0) outside torchrun.

    ``LOCAL_RANK`` defaults to ``RANK`` (a single machine), which torchrun always sets anyway.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return TorchrunEnv(rank, world, int(os.environ.get("LOCAL_RANK", str(rank))))
