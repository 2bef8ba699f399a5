"""The checks of a class list and of a label map (mask, pseudo label, prediction) against its classes and image."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .errors import DatasetError, LabelMapError

__all__ = ["check_label_map", "check_same_size", "label_matrix", "normalize_class_names"]


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


def label_matrix(ds: object) -> np.ndarray:
    """(N, C) bool image-level labels of a dataset (``len()``, ``get_labels(i)``: (C,) multi-hot over its C
    foreground classes, ``class_names``: background first); (0, C) for an empty one."""
    n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        return np.zeros((0, len(ds.class_names) - 1), bool)  # type: ignore[attr-defined]
    return np.stack([np.asarray(ds.get_labels(i)) > 0 for i in range(n)])  # type: ignore[attr-defined]
