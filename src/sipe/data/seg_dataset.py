"""The one dataset interface, :class:`SegDataset`: images, image-level labels, optional masks."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetError, EmptySplitError, MissingMaskError, list_some
from .image import ImageReadError, decoded_size, exif_transpose_to_match, image_size, read_image, read_label_png
from .labelmap import check_label_map, normalize_class_names
from .skiplist import SKIPPED_FILE, SkipCounter, read_skipped

__all__ = ["SegDataset"]

logger = logging.getLogger("sipe.data")

_CHECK_CACHE_VERSION = 1  # of image_checks*.json (bump when decode_checks computes something else)


class SegDataset:
    """Images with image-level labels and optional ground-truth masks.

    Items are dicts: ``image`` (H, W, 3) uint8 RGB, ``labels`` (K-1,) float32 multi-hot over the
    foreground classes, ``name`` str, ``mask`` (H, W) uint8 class indices with 255 = ignore, or
    ``None`` (no mask for this image, or ``with_masks=False``).

    Attributes:
        class_names: K names, index 0 = ``"background"``.
        names: one name per item (also the stem of every per-image output file).
        label_matrix: (N, K-1) float32 multi-hot labels of all items.
        skipped: the :class:`SkipCounter` of images dropped while building the dataset
            (no labels, too small); callers add their own skips and report it at the end.
    """

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        names: Sequence[str],
        image_paths: Sequence[Path],
        labels: np.ndarray,
        mask_paths: Sequence[Path | None],
        source: str,
        exif_transpose: bool,
        with_masks: bool = True,
        skip_unlabeled: bool = False,
        skipped: SkipCounter | None = None,
    ) -> None:
        self.class_names = normalize_class_names(class_names, source)
        self.source = source
        self.exif_transpose = exif_transpose
        self._exif_choice: dict[Path, bool] = {}  # image path -> orientation read (see exif_transpose_for)
        self.with_masks = with_masks
        self.skipped = skipped if skipped is not None else SkipCounter("images")
        if not len(names):
            raise EmptySplitError(
                f"{source} lists no images. Check that the split / labels file is not empty and names "
                "images that exist."
            )
        labels = np.asarray(labels, dtype=np.float32)
        if labels.shape != (len(names), self.num_classes - 1):
            raise DatasetError(
                f"{source}: labels have shape {labels.shape}, expected {(len(names), self.num_classes - 1)}"
            )
        keep = np.ones(len(names), dtype=bool)
        if skip_unlabeled:
            keep = labels.sum(axis=1) > 0
            for i in np.flatnonzero(~keep):
                self.skipped.add(names[i], "no labels")
            if not keep.any():
                raise EmptySplitError(
                    f"all {len(names)} images of {source} have no labels, so nothing is left to train or "
                    "evaluate on. Check the annotations / labels file (or set data.skip_unlabeled=false, in Python "
                    "skip_unlabeled=False, to keep them as negatives: background-only images)."
                )
        idx = np.flatnonzero(keep)
        self.names = [str(names[i]) for i in idx]
        self.image_paths = [Path(image_paths[i]) for i in idx]
        self.mask_paths = [None if mask_paths[i] is None else Path(mask_paths[i]) for i in idx]
        self.label_matrix = np.ascontiguousarray(labels[idx])
        if len(self.skipped):
            logger.warning(
                "%s (data.skip_unlabeled=false, in Python skip_unlabeled=False, keeps them as background-only)",
                self.skipped.summary(len(names)) + f" in {source}",
            )

    @property
    def num_classes(self) -> int:
        """K, background included."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        if not hasattr(self, "names"):  # during construction
            return f"{type(self).__name__}(...)"
        return f"{type(self).__name__}({self.source}: {len(self)} images, {self.num_classes} classes)"

    def _index(self, i: int) -> int:
        n = len(self.names)
        i = int(i)
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for {self!r}")
        return i % n

    def image_path(self, i: int) -> Path:
        return self.image_paths[self._index(i)]

    def mask_path(self, i: int) -> Path | None:
        """Path of item ``i``'s ground-truth mask, or ``None`` where there is none."""
        return self.mask_paths[self._index(i)]

    def get_labels(self, i: int) -> np.ndarray:
        """(K-1,) float32 multi-hot labels of item ``i``."""
        return self.label_matrix[self._index(i)].copy()

    def exif_transpose_for(self, i: int) -> bool:
        """Whether item ``i``'s image (and mask) is read with its EXIF orientation applied.

        The dataset's ``exif_transpose``, except for an image with a ground-truth mask whose size only
        one orientation matches: then that one (phone photos in a VOC layout whose masks were drawn on
        the displayed photo; masks drawn on the stored pixels in a custom folder). When both match (no
        orientation tag, a square photo) the dataset's rule stands. Decided from the headers, once
        per image.
        """
        i = self._index(i)
        image, mask = self.image_paths[i], self.mask_paths[i]
        if mask is None:
            return self.exif_transpose
        choice = self._exif_choice.get(image)
        if choice is None:
            try:
                choice = exif_transpose_to_match(image, image_size(mask, exif_transpose=False), self.exif_transpose)
            except ImageReadError:
                return self.exif_transpose  # read_image / read_mask report the bad file with their own message
            self._exif_choice[image] = choice
        return choice

    def read_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of item ``i`` (orientation: :meth:`exif_transpose_for`)."""
        return read_image(self.image_path(i), exif_transpose=self.exif_transpose_for(i))

    def read_mask(self, i: int) -> np.ndarray | None:
        """(H, W) uint8 ground-truth mask of item ``i`` (255 = ignore), or ``None``."""
        path = self.mask_path(i)
        if path is None:
            return None
        return check_label_map(read_label_png(path, exif_transpose=self.exif_transpose_for(i)), path,
                               num_classes=self.num_classes)

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        image = self.read_image(i)
        mask = self.read_mask(i) if self.with_masks else None
        if mask is not None:
            check_label_map(mask, self.mask_paths[i], size=image.shape[:2], against=f"image {self.image_paths[i]}",
                            fix="the mask must be drawn on the same pixels (check for EXIF rotation: datasets take "
                                "exif_transpose=...)")
        return {"image": image, "labels": self.label_matrix[i].copy(), "name": self.names[i], "mask": mask}

    # ---- subsets, checks ----------------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray) -> SegDataset:
        """A shallow copy holding only ``indices`` (in that order); shares the skip counter."""
        idx = [self._index(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        out = copy.copy(self)
        out.names = [self.names[i] for i in idx]
        out.image_paths = [self.image_paths[i] for i in idx]
        out.mask_paths = [self.mask_paths[i] for i in idx]
        out.label_matrix = self.label_matrix[idx]
        return out

    def copy(self) -> SegDataset:
        """A copy with its own skip list: dropping images from it changes neither this dataset nor its list
        (a stage narrows its copy without changing what another stage reads)."""
        out = self.subset(range(len(self)))
        out.skipped = copy.deepcopy(self.skipped)
        return out

    def _keep(self, keep: np.ndarray) -> None:
        idx = np.flatnonzero(keep)
        self.names = [self.names[i] for i in idx]
        self.image_paths = [self.image_paths[i] for i in idx]
        self.mask_paths = [self.mask_paths[i] for i in idx]
        self.label_matrix = self.label_matrix[idx]

    def drop_small(self, min_size: int) -> int:
        """Drop images whose shorter side is below ``min_size`` (the network stride), and unreadable ones.

        Every image is decoded in full once (a truncated file with an intact header is caught here,
        not in the middle of training); the outcome is cached per file in the dataset's cache folder
        (``image_checks.json``, keyed by path, size and mtime), so a second run decodes nothing.
        Every dropped image is recorded in ``skipped`` (reasons ``"smaller than <min_size> px"`` /
        ``"unreadable"``) and logged; returns how many were dropped.
        """
        total = len(self)
        keep = np.ones(total, dtype=bool)
        reason = f"smaller than {min_size} px"
        for i, (p, size) in enumerate(zip(self.image_paths, self.decode_checks(), strict=True)):
            if isinstance(size, str):
                keep[i] = False
                self.skipped.add(self.names[i], "unreadable", size, path=p)
                continue
            h, w = size
            if min(h, w) < min_size:
                keep[i] = False
                self.skipped.add(self.names[i], reason, f"{p} is {h}x{w}", path=p)
        dropped = int((~keep).sum())
        if dropped == total:
            raise EmptySplitError(
                f"every image of {self.source} is unreadable or smaller than {min_size} px; nothing is left "
                f"({list_some([f'{n} ({r})' for n, r in self.skipped.items])})."
            )
        if dropped:
            self._keep(keep)
            logger.warning("dropped %d of %d images of %s (%s)", dropped, total, self.source, self.skipped.summary())
        return dropped

    def drop_skipped_earlier(self, folder: str | os.PathLike) -> int:
        """Drop the images an earlier stage skipped on purpose (listed in ``folder``'s ``skipped.tsv``,
        see :func:`read_skipped`), so that their missing outputs are not taken for failures.

        Each is recorded in ``skipped`` with reason ``"skipped earlier (<its reason>)"``; returns how
        many were dropped.
        """
        listed, files = read_skipped(folder)
        keep = np.array([n not in listed for n in self.names], dtype=bool)
        for i in np.flatnonzero(~keep):
            name = self.names[i]
            self.skipped.add(name, f"skipped earlier ({listed[name]})", f"listed in {files[0].parent}",
                             path=self.image_paths[i])
        dropped = int((~keep).sum())
        if dropped:
            self._keep(keep)
            logger.info("left out %d images that the stage writing %s skipped (its %s)", dropped, folder, SKIPPED_FILE)
        return dropped

    def decode_checks(self) -> list[list[int] | str]:
        """Per item: ``[H, W]`` after a full decode, or the reason it cannot be read (cached, see ``drop_small``)."""
        from ._cache import cached_file_checks, default_cache_dir

        cache_dir = getattr(self, "cache_dir", None) or default_cache_dir(
            Path(getattr(self, "root", None) or self.image_paths[0].parent)
        )
        exif = self.exif_transpose

        def check(path: Path) -> list[int] | str:
            try:
                return list(decoded_size(path, exif_transpose=exif))
            except ImageReadError as err:
                return str(err)

        paths = [p.resolve() for p in self.image_paths]
        return cached_file_checks(cache_dir / f"image_checks{'_exif' if exif else ''}.json", paths, check,
                                  version=_CHECK_CACHE_VERSION, desc="checking images")

    def missing_masks(self) -> list[str]:
        """Names of the items without a ground-truth mask."""
        return [n for n, m in zip(self.names, self.mask_paths, strict=True) if m is None]

    def require_masks(self) -> None:
        """Raise :class:`MissingMaskError` (naming the first few images) unless every item has a mask."""
        missing = self.missing_masks()
        if missing:
            shown = list_some(missing)
            raise MissingMaskError(
                f"{len(missing)} of {len(self)} images of {self.source} have no ground-truth mask: {shown}. "
                f"{self._mask_hint()}"
            )

    def _mask_hint(self) -> str:
        return "Provide the masks, or evaluate on a split whose images all have them."
