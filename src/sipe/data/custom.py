"""Your own photos: a folder of images plus a CSV or JSON file naming the classes in each.

CSV (header row required; columns ``image`` and ``labels``; classes separated by ``;`` because
class names may contain spaces, e.g. ``potted plant``; an empty ``labels`` cell = no labels)::

    image,labels
    cat_01.jpg,cat;sofa
    sub/dog_07.png,dog

JSON, either a mapping or a list of records::

    {"cat_01.jpg": ["cat", "sofa"], "sub/dog_07.png": ["dog"]}
    [{"image": "cat_01.jpg", "labels": ["cat", "sofa"]}, ...]

Image paths are relative to ``image_dir``. An item's ``name`` is that path without its suffix
(``sub/dog_07``); masks, when ``mask_dir`` is given, are ``<mask_dir>/<name>.png`` (index PNGs,
0 = background, 1..K-1 in class-list order, 255 = ignore). Images are EXIF-rotated, so phone
photos come out upright; masks must be drawn on the upright image.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError, EmptySplitError, LikelyTypoError, UnknownClassError, check_root, list_some
from .labelmap import label_matrix, normalize_class_names
from .seg_dataset import SegDataset

__all__ = ["CustomDataset", "check_class_typos", "read_labels_file", "warn_classes_without_images"]

logger = logging.getLogger("sipe.data")


_WARNED: set[tuple[str, ...]] = set()  # (source, classes): each named once per process


def warn_classes_without_images(ds: Any, log: logging.Logger = logger) -> list[str]:
    """The foreground classes of ``ds`` that no image holds, named in one warning with the fix (once per
    source and process; a logger that drops warnings leaves it to the next call). Returns them."""
    names = list(ds.class_names)[1:]
    empty = [names[k] for k in np.flatnonzero(~label_matrix(ds).any(axis=0))]
    key = (str(getattr(ds, "source", "")), *empty)
    if empty and key not in _WARNED and log.isEnabledFor(logging.WARNING):
        _WARNED.add(key)
        # A class nobody labelled can be neither learned nor scored: say so at the start, not on the page.
        log.warning("%d of %d classes have no image in %s: %s; label images of them, or drop them from "
                    "class_names", len(empty), len(names), getattr(ds, "source", "the dataset"), ", ".join(empty))
    return empty


def _split_labels(cell: str) -> list[str]:
    return [c.strip() for c in cell.split(";") if c.strip()]


def read_labels_file(path: str | os.PathLike) -> list[tuple[str, list[str], str]]:
    """Parse a CSV or JSON labels file into ``(image, class names, where)`` rows.

    ``where`` locates the row in error messages (``"file.csv line 7"``, ``"file.json key 'a.jpg'"``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist. Give a CSV (image,labels) or JSON file.")
    suffix = path.suffix.lower()
    rows: list[tuple[str, list[str], str]] = []
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DatasetError(f"cannot parse labels file {path}: {err}") from err
        if isinstance(data, dict):
            items = [(k, v, f"{path} key {k!r}") for k, v in data.items()]
        elif isinstance(data, list):
            items = []
            for j, rec in enumerate(data):
                if not isinstance(rec, dict) or "image" not in rec:
                    raise DatasetError(f"{path} entry {j} must be an object with 'image' and 'labels' keys")
                items.append((rec["image"], rec.get("labels", []), f"{path} entry {j} ({rec['image']!r})"))
        else:
            raise DatasetError(f"{path} must hold an object {{image: [classes]}} or a list of records")
        for image, labels, where in items:
            if isinstance(labels, str):
                labels = _split_labels(labels)
            if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels):
                raise DatasetError(f"{where}: labels must be a list of class names, got {labels!r}")
            rows.append((str(image), [c.strip() for c in labels if c.strip()], where))
    elif suffix in (".csv", ".txt", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["image", "labels"]:
                raise DatasetError(
                    f"{path} line 1 must be the header 'image,labels' (got {header!r}); then one row per image "
                    "with its classes separated by ';', e.g. 'cat_01.jpg,cat;sofa'."
                )
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) > 2:
                    raise DatasetError(
                        f"{where} has {len(row)} columns; separate classes with ';' (not ',') or quote the cell."
                    )
                image = row[0].strip()
                if not image:
                    raise DatasetError(f"{where} has an empty image path")
                rows.append((image, _split_labels(row[1]) if len(row) > 1 else [], where))
    else:
        raise DatasetError(f"labels file {path} must end in .csv, .tsv or .json")
    seen: dict[str, str] = {}
    for image, _, where in rows:
        rel = Path(image)
        if rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(
                f"{where}: image path {image!r} must be relative to the image folder and stay inside it "
                "(its name keys the output files)."
            )
        if image in seen:
            raise DatasetError(f"{where} repeats image {image!r} (first at {seen[image]}); merge the two rows.")
        seen[image] = where
    return rows


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of neighbours."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _looks_alike(a: str, b: str) -> bool:
    """Two class names that a slip of the keyboard turns into each other (case ignored): one edit for
    names of up to 4 letters, two for longer ones."""
    a, b = a.lower(), b.lower()
    return a == b or _edit_distance(a, b) <= (1 if min(len(a), len(b)) <= 4 else 2)


TYPO_MAX_ROWS = 2  # an inferred class named in at most this many rows is checked for a likelier spelling
TYPO_MIN_RATIO = 3  # ... that is named in at least this many times as many rows (and at least 5)


def check_class_typos(rows: Sequence[tuple[str, list[str], str]]) -> None:
    """Raise :class:`LikelyTypoError` when an inferred class looks like a misspelling of another.

    A class named in at most ``TYPO_MAX_ROWS`` rows whose spelling is one or two edits (a swap of
    neighbours counts as one) from a class named in at least ``TYPO_MIN_RATIO`` times as many rows
    (and at least 5) would silently become a class of its own; the error names both with their counts
    and the row. An explicit class list skips this check (its names are the user's decision).

    Args:
        rows: ``(image, class names, where)`` as returned by :func:`read_labels_file`.
    """
    counts = Counter(c for _, cs, _ in rows for c in set(cs))
    found = []
    for rare, n in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
        if n > TYPO_MAX_ROWS:
            break
        likely = [c for c, m in counts.items() if m >= max(5, TYPO_MIN_RATIO * n) and _looks_alike(rare, c)]
        if likely:
            found.append((rare, n, max(likely, key=lambda c: counts[c])))
    if not found:
        return
    rare, n, common = found[0]
    where = next(w for _, cs, w in rows if rare in cs)

    def images(k: int) -> str:
        return f"{k} image{'s' if k != 1 else ''}"

    more = f" (and {len(found) - 1} more such names)" if len(found) > 1 else ""
    raise LikelyTypoError(
        f"{where}: {rare!r} ({images(n)}) looks like {common!r} ({images(counts[common])}){more}: fix the labels "
        f"file or pass --class-names / data.class_names"
    )


class CustomDataset(SegDataset):
    """A folder of images with a CSV / JSON labels file (format in the module docstring).

    Args:
        image_dir: folder the labels file's image paths are relative to.
        labels_file: the CSV (``image,labels``) or JSON file.
        class_names: the class list (``"background"`` first, prepended when absent); by default the
            sorted set of names in the labels file, checked for misspellings
            (:func:`check_class_typos`). Names outside a given list raise :class:`UnknownClassError`
            naming the file and row.
        mask_dir: optional folder of ``<name>.png`` index masks (for evaluation); images without one
            get ``mask=None`` (``missing_masks()`` lists them).
        skip_unlabeled: drop images with no labels (recorded in ``skipped``). Off by default: an image
            without labels is a negative (all background), which the classifier needs to contrast with.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        labels_file: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        mask_dir: str | os.PathLike | None = None,
        *,
        with_masks: bool = True,
        skip_unlabeled: bool = False,
        exif_transpose: bool = True,
    ) -> None:
        self.root = check_root(
            image_dir, "image folder", "Pass the folder your labels file's image paths are relative to."
        )
        self.labels_file = Path(labels_file).expanduser()
        rows = read_labels_file(self.labels_file)
        if not rows:
            raise EmptySplitError(f"labels file {self.labels_file} lists no images; add one row per image.")
        for _, cs, where in rows:
            if "background" in cs:
                raise DatasetError(f"{where} lists 'background': it is class 0 and implicit in every image; remove it.")
        if class_names is None:
            inferred = sorted({c for _, cs, _ in rows for c in cs})
            if not inferred:
                raise DatasetError(
                    f"labels file {self.labels_file} names no class at all, so the class list cannot be inferred; "
                    "label the images or pass class_names=."
                )
            check_class_typos(rows)
            classes = normalize_class_names(inferred, str(self.labels_file))
            logger.info("%d classes inferred from %s: %s", len(inferred), self.labels_file, ", ".join(inferred))
        else:
            classes = normalize_class_names(class_names, "class_names")
        index = {c: k for k, c in enumerate(classes)}
        labels = np.zeros((len(rows), len(classes) - 1), dtype=np.float32)
        for i, (_, cs, where) in enumerate(rows):
            for c in cs:
                k = index.get(c)
                if k is None:
                    raise UnknownClassError(
                        f"{where} names class {c!r}, which is not in the class list ({', '.join(classes[1:])}). "
                        "Fix the spelling or add it to class_names."
                    )
                labels[i, k - 1] = 1.0

        image_paths = [self.root / image for image, _, _ in rows]
        missing = [str(p) for p in image_paths if not p.is_file()]
        if missing:
            shown = list_some(missing)
            raise DatasetError(
                f"{len(missing)} images named in {self.labels_file} do not exist: {shown}. Fix the paths (they are "
                f"relative to {self.root}) or remove those rows."
            )
        names = [Path(image).with_suffix("").as_posix() for image, _, _ in rows]
        counts = Counter(names)
        dup = [n for n, k in counts.items() if k > 1]
        if dup:
            raise DatasetError(
                f"{self.labels_file} lists images that differ only in suffix ({sorted(dup)[:5]}); their outputs "
                "would collide. Rename one of each."
            )
        self.mask_dir = None
        mask_paths: list[Path | None] = [None] * len(rows)
        if mask_dir is not None:
            self.mask_dir = check_root(
                mask_dir, "mask folder", "Pass the folder holding <name>.png masks, or no mask_dir."
            )
            mask_paths = [p if (p := self.mask_dir / f"{n}.png").is_file() else None for n in names]
            without = [n for n, p in zip(names, mask_paths, strict=True) if p is None]
            if without:
                # Named, so that a photo later dropped as unreadable is recognised here too.
                logger.warning("%d of %d images have no mask in %s: %s", len(without),
                               len(rows), self.mask_dir, list_some(without))
        super().__init__(
            class_names=classes,
            names=names,
            image_paths=image_paths,
            labels=labels,
            mask_paths=mask_paths,
            source=f"labels file {self.labels_file}",
            exif_transpose=exif_transpose,
            with_masks=with_masks,
            skip_unlabeled=skip_unlabeled,
        )
        warn_classes_without_images(self)

    def _mask_hint(self) -> str:
        if self.mask_dir is None:
            return "Pass mask_dir= (a folder of <name>.png index masks)."
        return f"Add <name>.png index masks to {self.mask_dir}."
