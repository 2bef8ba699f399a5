"""The datasets of a run, loaded once: the images every stage uses, the one skip list, the data fingerprint.

A run reads its folder once. Images that cannot be used (unreadable, smaller than the stride) are dropped
from every split here, named once in ``OUT/skipped.tsv`` and warned about once per invocation; the stages
receive these datasets and never see the dropped images. The fingerprint identifies what the stages use
(image names, decoded sizes, image-level labels, class list; mask bytes of the evaluation splits), so that
a rerun on the same images is the same run wherever the folders lie, and removing rows of images that were
skipped anyway changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sipe.run.config import RunConfig, eval_splits

__all__ = ["RunData", "run_data"]

logger = logging.getLogger("sipe.run")


@contextlib.contextmanager
def _quiet(name: str = "sipe.data") -> Iterator[None]:
    """Per-image skip warnings of ``name`` held back: the run names each skipped image once itself."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class RunData:
    """The datasets of a run, read and checked without torch: the training split (``training``: SIPE's
    datasets; ``train``: its images), the evaluation split of the CAMs / pseudo masks (``eval``) and that of
    the segmentation network (``seg_eval``), ``None`` where no masks exist; ``skipped`` lists every image
    left out, once."""

    def __init__(self, cfg: RunConfig) -> None:
        from sipe.data.skiplist import SkipCounter
        from sipe.train.inputs import training_data

        self.cfg = cfg
        self.skipped = SkipCounter("images", log=logger)
        with _quiet():
            self.training = training_data(cfg.train)  # checks classes and batch size
        self.train = self.training.train
        self._note(self.train)
        from sipe.data.custom import warn_classes_without_images

        warn_classes_without_images(self.train, logger)  # after the quiet load, which would hide it
        split, seg_split = eval_splits(cfg)
        self.eval = self._masked(split) if split is not None else None
        self.seg_eval = None
        if seg_split is not None:
            self.seg_eval = self.eval if seg_split == split else self._masked(seg_split)
        # Evaluation images that are training images already have their IS-CAMs and pseudo masks there.
        self.eval_in_train = self.eval is not None and set(self.eval.names) <= set(self.train.names)
        self.skipped.log()

    def _note(self, ds: Any) -> None:
        """Take the images ``ds`` dropped into the run's list (warning once for each new one)."""
        for (name, reason), (path, detail) in zip(ds.skipped.items, ds.skipped.details, strict=True):
            if name not in self.skipped.names:
                self.skipped.add(name, reason, detail, path=path or None)

    def _masked(self, split: str) -> Any:
        from sipe.data import dataset_from_config

        ds = dataset_from_config(self.cfg.data, split, with_masks=True)
        with _quiet():
            ds.drop_small(self.cfg.data.min_size)
        self._note(ds)
        ds.require_masks()
        if list(ds.class_names) != list(self.train.class_names):
            raise ValueError(f"the evaluation split {ds.source} has classes {ds.class_names}, the training split "
                             f"{self.train.class_names}; use the same class list (data.class_names)")
        return ds

    def masked_train(self) -> Any | None:
        """The training images with their ground-truth masks, or ``None`` unless every one has a mask."""
        from sipe.data import dataset_from_config

        try:
            ds = dataset_from_config(self.cfg.data, self.cfg.data.split, with_masks=True)
        except FileNotFoundError:
            return None
        keep = set(self.train.names)
        ds = ds.subset([i for i, n in enumerate(ds.names) if n in keep])
        return ds if not ds.missing_masks() else None

    def write_skipped(self, out: str | Path) -> Path:
        """``out/skipped.tsv``: every image the run left out, with the reason (header only when none)."""
        from sipe.data.skiplist import write_skipped

        return write_skipped(out, self.skipped)

    def fingerprint(self) -> dict[str, str]:
        """Per split: the image count and a hash of what the stages use of it (names, decoded sizes, labels,
        class list; the masks' bytes for the evaluation splits)."""
        from sipe.data.fingerprint import images_fingerprint

        out = {"train": images_fingerprint(self.train)}
        for key, ds in (("eval", self.eval), ("seg_eval", self.seg_eval)):
            if ds is not None:
                out[key] = images_fingerprint(ds, masks=True)
        return out


def run_data(cfg: RunConfig) -> RunData:
    """:class:`RunData` of ``cfg`` (resolved; raises the dataset errors: missing files, unknown classes,
    no masks)."""
    return RunData(cfg)
