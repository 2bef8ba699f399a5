"""Deterministic batch sampling: every item gets a seed from (seed, epoch, index), so resumed and DDP
runs see exactly the samples of one uninterrupted single-process run."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from sipe.config.engine import check_global_batch

__all__ = ["SeededBatchSampler", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` (a 32-bit int, rank-independent)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch as ``[(index, seed), ...]``.

    Epoch ``e`` visits a permutation of the dataset drawn from ``(seed, e)``; global batch ``i``
    is ``perm[i*B:(i+1)*B]`` (the incomplete tail is dropped) and rank ``r`` of ``W`` takes the
    contiguous slice ``[r*B/W, (r+1)*B/W)``, so the ranks' shares of one step together are exactly
    the single-process batch. ``set_epoch(e, start_batch)`` selects the epoch and skips batches
    already trained (mid-epoch resume).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        check_global_batch(num_samples, batch_size, world_size)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.local_batch = batch_size // world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def global_batch(self, epoch: int, i: int) -> list[tuple[int, int]]:
        """All ``(index, seed)`` pairs of global batch ``i`` in ``epoch`` (every rank's share)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
        return [(int(j), sample_seed(self.seed, epoch, int(j))) for j in idx]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        lo = self.rank * self.local_batch
        for i in range(self.start_batch, self.batches_per_epoch):
            share = perm[i * self.batch_size + lo : i * self.batch_size + lo + self.local_batch]
            yield [(int(j), sample_seed(self.seed, self.epoch, int(j))) for j in share]
