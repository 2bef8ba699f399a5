"""The data layer's errors, and the helpers that phrase them: one line naming the file and the fix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sipe.errors import InputError

__all__ = [
    "DatasetError",
    "DatasetRootError",
    "EmptySplitError",
    "LabelMapError",
    "LikelyTypoError",
    "MissingMaskError",
    "UnknownClassError",
    "check_root",
    "list_some",
]


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
