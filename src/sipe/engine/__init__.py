"""The generic training engine: configuration, torchrun/DDP, deterministic sampling, SGD + poly
schedule, resumable checkpoints and the loop (:func:`fit`) that every training stage runs."""

from sipe.engine.config import TrainConfig
from sipe.engine.distributed import (
    DEVICE_CHOICES,
    DistInfo,
    barrier,
    is_main_process,
    rank_and_world,
    resolve_device,
    setup_distributed,
    shard_indices,
)
from sipe.engine.loop import fit, move_to_device
from sipe.engine.optim import build_optimizer, poly_lr, set_lr
from sipe.engine.sampler import SeededBatchSampler, sample_seed

__all__ = [
    "DEVICE_CHOICES",
    "DistInfo",
    "SeededBatchSampler",
    "TrainConfig",
    "barrier",
    "build_optimizer",
    "fit",
    "is_main_process",
    "move_to_device",
    "poly_lr",
    "rank_and_world",
    "resolve_device",
    "sample_seed",
    "set_lr",
    "setup_distributed",
    "shard_indices",
]
