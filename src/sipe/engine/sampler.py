"""Deterministic batch sampling: every item gets a seed from (seed, epoch, index), so resumed and DDP runs
see exactly the samples of one uninterrupted single-process run.

Class-aware sampling (``weights``): an epoch draws ``num_samples`` items with replacement, item ``i`` with
probability proportional to ``weights[i]`` (e.g. :func:`repeat_factors`, LVIS's repeat-factor rule), from
a generator seeded by ``(seed, epoch)``; the epoch keeps its length, so steps per epoch, checkpoints and
resume work as with the plain permutation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from sipe.config.engine import check_global_batch

__all__ = ["SeededBatchSampler", "repeat_factors", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` (a 32-bit int, rank-independent)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """LVIS's repeat factor of every image: ``max(1, max over its classes c of sqrt(t / f_c))`` with ``f_c``
    the fraction of images holding class ``c`` and ``t = threshold``; 1 for an image without a class.

    labels (N, C) multi-hot (image-level labels, or the classes present in its pseudo mask). Returns (N,)
    float64 >= 1. A class in fewer than a fraction ``t`` of the images is seen about ``t / f_c`` times
    as often as under uniform sampling (square root per image, squared over the images holding it).
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
    if threshold <= 0:
        raise ValueError(f"the repeat-factor threshold must be > 0, got {threshold}")
    freq = labels.mean(axis=0) if len(labels) else np.zeros(labels.shape[1])
    with np.errstate(divide="ignore"):
        per_class = np.where(freq > 0, np.sqrt(threshold / np.maximum(freq, 1e-12)), 1.0)
    per_image = np.where(labels, per_class[None, :], 1.0).max(axis=1, initial=1.0)
    return np.maximum(per_image, 1.0)


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch as ``[(index, seed), ...]``.

    Epoch ``e`` visits a permutation of the dataset drawn from ``(seed, e)`` (or, with ``weights``, a
    weighted draw with replacement of as many items); global batch ``i`` is ``order[i*B:(i+1)*B]`` (the
    incomplete tail is dropped) and rank ``r`` of ``W`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)``,
    so the ranks' shares of one step together are exactly the single-process batch.
    ``set_epoch(e, start_batch)`` selects the epoch and skips batches already trained (mid-epoch resume).
    An item drawn twice in one epoch gets a seed from its position, so its two crops differ.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: Sequence[float] | np.ndarray | None = None):
        check_global_batch(num_samples, batch_size, world_size)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.local_batch = batch_size // world_size
        self.epoch = 0
        self.start_batch = 0
        self.probs: np.ndarray | None = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (num_samples,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"sampling weights must be {num_samples} finite values >= 0 with a positive sum, "
                                 f"got shape {w.shape}")
            self.probs = w / w.sum()

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def order(self, epoch: int) -> np.ndarray:
        """The items of ``epoch`` in visiting order, (num_samples,) int64 (the same on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.probs is None:
            return rng.permutation(self.num_samples)
        return rng.choice(self.num_samples, size=self.num_samples, replace=True, p=self.probs)

    def _pairs(self, epoch: int, order: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
        if self.probs is None:
            return [(int(j), sample_seed(self.seed, epoch, int(j))) for j in order[lo:hi]]
        # Weighted draws repeat items: seed by position (offset so as not to reuse an index's seed).
        return [(int(order[p]), sample_seed(self.seed, epoch, self.num_samples + p)) for p in range(lo, hi)]

    def global_batch(self, epoch: int, i: int) -> list[tuple[int, int]]:
        """All ``(index, seed)`` pairs of global batch ``i`` in ``epoch`` (every rank's share)."""
        return self._pairs(epoch, self.order(epoch), i * self.batch_size, (i + 1) * self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        lo = self.rank * self.local_batch
        for i in range(self.start_batch, self.batches_per_epoch):
            start = i * self.batch_size + lo
            yield self._pairs(self.epoch, order, start, start + self.local_batch)
