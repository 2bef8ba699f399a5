"""The one dataset interface, its errors, and the skip counter callers report at the end of a run."""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sipe.errors import InputError

from .image import ImageReadError, decoded_size, exif_transpose_to_match, image_size, read_image, read_label_png

__all__ = [
    "DatasetError",
    "DatasetRootError",
    "EmptySplitError",
    "LabelMapError",
    "LikelyTypoError",
    "MissingMaskError",
    "SKIPPED_FILE",
    "SegDataset",
    "SkipCounter",
    "UnknownClassError",
    "check_label_map",
    "check_root",
    "check_same_size",
    "list_some",
    "normalize_class_names",
    "read_skipped",
]

logger = logging.getLogger("sipe.data")

_CHECK_CACHE_VERSION = 1  # of image_checks*.json (bump when decode_checks computes something else)
SKIPPED_FILE = "skipped.tsv"  # every command that skips inputs lists them in its output folder


class DatasetError(InputError):
    """A dataset that cannot be used as given; the message names the file and the fix."""


class EmptySplitError(DatasetError):
    """A split (or labels file) that yields no images."""


class UnknownClassError(DatasetError):
    """A label naming a class that is not in the dataset's class list."""


class LikelyTypoError(DatasetError):
    """An inferred class name that looks like a misspelling of a common one (a labels-file mistake)."""


class MissingMaskError(DatasetError):
    """Ground-truth masks required (evaluation) but missing for some images."""


class LabelMapError(DatasetError):
    """A label map (mask, pseudo label, prediction) that does not fit: a class index >= K other than
    255 (ignore), or another size than its image."""


class DatasetRootError(FileNotFoundError):
    """A dataset root or folder that does not exist."""


def list_some(items: Sequence[str], n: int = 5) -> str:
    """``"a, b, c, ... (12 in all)"``: the first ``n`` items of a long list for an error message."""
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(str(x) for x in items[:n]) + more


def check_root(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Return ``path`` as a Path, or raise :class:`DatasetRootError` naming it and ``hint``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetRootError(f"{what} {path} does not exist or is not a folder. {hint}")
    return path


def normalize_class_names(class_names: Sequence[str], source: str = "class list") -> list[str]:
    """Validate a class list and put ``"background"`` first (prepended when absent).

    Returns K names, index 0 = ``"background"``.
    """
    names = [str(c).strip() for c in class_names]
    if any(not c for c in names):
        raise DatasetError(f"{source} contains an empty class name: {list(class_names)!r}")
    if "background" in names[1:]:
        raise DatasetError(f"{source}: 'background' may only appear first (it is class 0): {names!r}")
    if not names or names[0] != "background":
        names = ["background", *names]
    dup = [c for c, n in Counter(names).items() if n > 1]
    if dup:
        raise DatasetError(f"{source} lists classes more than once: {dup!r}")
    if len(names) < 2:
        raise DatasetError(f"{source} has no foreground class; give at least one class name.")
    if len(names) > 255:
        raise DatasetError(f"{source} has {len(names)} classes; masks store uint8 indices with 255 = ignore.")
    return names


def check_same_size(
    shape: Sequence[int], size: Sequence[int], path: str | os.PathLike, *, what: str, against: str, fix: str
) -> None:
    """Raise :class:`LabelMapError` unless the (H, W) ``shape`` of ``path``'s map equals ``size``.

    The message reads ``"<what> <path> is HxW but <against> is HxW; <fix>"``.
    """
    if tuple(shape) != tuple(size):
        (h, w), (sh, sw) = tuple(shape), tuple(size)
        raise LabelMapError(f"{what} {path} is {h}x{w} but {against} is {sh}x{sw}; {fix}")


def check_label_map(
    label: np.ndarray,
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    size: Sequence[int] | None = None,
    what: str = "mask",
    against: str = "its image",
    fix: str = "the mask must be drawn on the same pixels as its image",
    class_fix: str = "Pass the right class list or fix the mask.",
) -> np.ndarray:
    """The one check of a label map read from ``path``: every value a class index < ``num_classes``
    or 255 (ignore), and (H, W) equal to ``size``; ``None`` skips that half. Returns ``label``.

    Raises :class:`LabelMapError` with one line naming the file and the fix (``fix`` for the size,
    ``class_fix`` for the classes).
    """
    if num_classes is not None:
        bad = (label >= num_classes) & (label != 255)
        if bad.any():
            raise LabelMapError(
                f"{what} {path} contains class index {int(label[bad].max())} but the dataset has only "
                f"{num_classes} classes (0..{num_classes - 1}, 255 = ignore). {class_fix}"
            )
    if size is not None:
        check_same_size(label.shape[:2], size, path, what=what, against=against, fix=fix)
    return label


class SkipCounter:
    """Items a run skipped, with reasons: log each (the first few) as it happens, and a count at the end.

    ``add(name, reason)`` records one skip; ``summary()`` gives e.g.
    ``"skipped 3 of 120 images: 2 unreadable, 1 no labels"``; ``log()`` writes it as a warning.
    Callers that loop over a dataset catch :class:`ImageReadError` and ``add`` the item here;
    ``write_tsv(run_dir / SKIPPED_FILE)`` lists every skipped item in the run folder.
    """

    def __init__(self, what: str = "images", *, show: int = 10, log: logging.Logger | None = None) -> None:
        self.what = what
        self.show = show
        self.items: list[tuple[str, str]] = []  # (name, reason)
        self.details: list[tuple[str, str]] = []  # (path, detail), parallel to items
        self._log = log or logger

    def add(self, name: str, reason: str, detail: str = "", path: str | os.PathLike | None = None) -> None:
        """Record that ``name`` (file ``path`` when known) was skipped for ``reason`` (a short category
        such as ``"unreadable"``); ``detail`` (e.g. the decoder's message) is logged and kept for the TSV."""
        self.items.append((str(name), reason))
        self.details.append((str(path) if path is not None else "", detail))
        if len(self.items) <= self.show:
            self._log.warning("skipping %s (%s)%s", name, reason, f": {detail}" if detail else "")
        elif len(self.items) == self.show + 1:
            self._log.warning("further skipped %s are counted, not listed", self.what)

    def extend(self, other: SkipCounter, *, new_only: bool = False) -> None:
        """Add ``other``'s records (e.g. gathered from other ranks) without logging them again;
        ``new_only``: only those of names not recorded here yet."""
        seen = set(self.names) if new_only else set()
        for item, detail in zip(other.items, other.details, strict=True):
            if item[0] not in seen:
                self.items.append(item)
                self.details.append(detail)

    def write_tsv(self, path: str | os.PathLike) -> Path:
        """Write every skipped item to ``path`` as a TSV (header ``name path reason detail``), atomically.

        The file is written even when nothing was skipped (header only), so that a run folder always
        tells whether its command dropped anything.
        """
        from sipe.io import write_text

        def clean(text: str) -> str:  # one record per line, one field per tab
            return " ".join(str(text).split())

        rows = ["name\tpath\treason\tdetail"]
        for (name, reason), (file, detail) in zip(self.items, self.details, strict=True):
            rows.append("\t".join(clean(x) for x in (name, file, reason, detail)))
        path = Path(path)
        write_text(path, "\n".join(rows) + "\n")
        return path

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.items]

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(r for _, r in self.items))

    def summary(self, total: int | None = None) -> str:
        of = f" of {total}" if total is not None else ""
        if not self.items:
            return f"skipped 0{of} {self.what}"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason().items()))
        return f"skipped {len(self.items)}{of} {self.what}: {reasons}"

    def log(self, total: int | None = None, level: int = logging.WARNING) -> None:
        """Log the summary (only when something was skipped)."""
        if self.items:
            self._log.log(level, self.summary(total))


# Folders whose skipped.tsv sits one level up: `sipe cam --out D` writes D/skipped.tsv beside D/is_cam, D/cam.
_LISTED_IN_PARENT = ("is_cam", "cam")


def read_skipped(folder: str | os.PathLike) -> tuple[dict[str, str], list[Path]]:
    """The images an earlier stage skipped on purpose, from the ``skipped.tsv`` it wrote beside its outputs.

    Reads ``folder/skipped.tsv`` and ``folder/skipped_rank<r>.tsv`` (torchrun), or, for the ``is_cam`` /
    ``cam`` folder of ``sipe cam``, those of its parent. Returns ``{name: reason}`` and the files read
    (both empty when the folder has no such list).
    """
    import csv

    folder = Path(folder)
    where = folder.parent if folder.name in _LISTED_IN_PARENT else folder
    files = sorted(p for p in where.glob("skipped*.tsv") if p.name == SKIPPED_FILE or p.name.startswith("skipped_rank"))
    listed: dict[str, str] = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row.get("name"):
                    listed[row["name"]] = row.get("reason") or "skipped"
    return listed, files


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
