"""``classes.json``: what the pixel values of a folder of masks mean, written beside every mask folder.

Every folder of index masks sipe writes (pseudo labels, confident regions, predictions) holds one::

    {"format": "sipe.classes/1",
     "classes": [{"value": 0, "name": "background", "color": [0, 0, 0]},
                 {"value": 1, "name": "ball", "color": [128, 0, 0]}, ...],
     "ignore": {"value": 255, "name": "ignore", "color": [255, 255, 255]}}

``value`` is the pixel value in the PNG, ``color`` the RGB colour of that value in the PNG's palette
(the VOC palette), ``ignore`` the value of pixels that carry no class (uncertain regions of
``sipe refine crf-regions``; unlabelled pixels). Readers: :func:`read_classes_file`,
:mod:`sipe.data.convert` (``sipe convert``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sipe.errors import InputError

__all__ = ["CLASSES_FILE", "IGNORE_VALUE", "MaskClasses", "read_classes_file", "write_classes_file"]

CLASSES_FILE = "classes.json"
IGNORE_VALUE = 255
_FORMAT = "sipe.classes/1"


@dataclass(frozen=True)
class MaskClasses:
    """The meaning of a mask folder's pixel values: ``names[v]`` and ``colors[v]`` (RGB) for value ``v``
    (``0`` = background), and the ignore value (``None``: the masks use none)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore: int | None = IGNORE_VALUE


def write_classes_file(folder: str | os.PathLike, class_names: Sequence[str], *, ignore_name: str = "ignore") -> Path:
    """Write ``folder/classes.json`` for masks whose pixel value ``v`` is ``class_names[v]``, atomically.

    Args:
        folder: the mask folder (created when absent).
        class_names: K names, ``"background"`` first (a dataset's or checkpoint's ``class_names``).
        ignore_name: what value 255 means in these masks (``"uncertain"`` for confident regions).
    """
    from sipe.io import voc_palette, write_text

    palette = voc_palette()
    if not 1 <= len(class_names) <= IGNORE_VALUE:
        raise ValueError(f"{len(class_names)} class names; index masks hold 1 to {IGNORE_VALUE} classes")
    classes = [{"value": v, "name": str(n), "color": palette[v].tolist()} for v, n in enumerate(class_names)]
    ignore = {"value": IGNORE_VALUE, "name": ignore_name, "color": palette[IGNORE_VALUE].tolist()}
    # One class a line, so that the file reads as the table it is.
    text = (f'{{\n  "format": {json.dumps(_FORMAT)},\n  "classes": [\n'
            + ",\n".join(f"    {json.dumps(c)}" for c in classes)
            + f'\n  ],\n  "ignore": {json.dumps(ignore)}\n}}\n')
    path = Path(folder) / CLASSES_FILE
    write_text(path, text)
    return path


def read_classes_file(path: str | os.PathLike) -> MaskClasses:
    """Read a ``classes.json`` (the module's format) or a text file of class names, one per line in
    pixel-value order (``background`` first, prepended when absent; colours: the VOC palette).

    Raises :class:`sipe.errors.InputError` naming the file and what is wrong with it.
    """
    from sipe.io import voc_palette

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file {path} does not exist; give a classes.json or a text file of names")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise InputError(f"classes file {path} names no class; write one class name per line")
        if names[0] != "background":
            names = ["background", *names]
        palette = voc_palette()
        return MaskClasses(tuple(names), tuple(tuple(palette[v].tolist()) for v in range(len(names))))
    try:
        data = json.loads(text)
        entries = sorted(data["classes"], key=lambda c: int(c["value"]))
        values = [int(c["value"]) for c in entries]
        names = tuple(str(c["name"]) for c in entries)
        colors = tuple(tuple(int(x) for x in c["color"]) for c in entries)
        ignore = data.get("ignore")
        ignore_value = None if ignore is None else int(ignore["value"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a classes.json written by sipe ({err!r}); rewrite it or pass another") from err
    if values != list(range(len(values))) or not values:
        raise InputError(f"{path}: class values must be 0, 1, ..., K-1 without gaps, got {values}")
    if any(len(c) != 3 for c in colors):
        raise InputError(f"{path}: every colour must be [R, G, B]")
    return MaskClasses(names, colors, ignore_value)
