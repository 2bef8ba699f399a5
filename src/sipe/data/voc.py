"""PASCAL VOC 2012 in its standard layout, with image-level labels parsed from the XML annotations.

Layout under ``root`` (``VOCdevkit/VOC2012``)::

    JPEGImages/<name>.jpg
    Annotations/<name>.xml            image-level labels: every <object><name> (difficult ones too)
    SegmentationClass/<name>.png      palette PNGs, 0..20 and 255 (optional)
    SegmentationClassAug/<name>.png   SBD masks (optional; used where SegmentationClass has none)

The labels equal the official ``cls_labels.npy`` (which is not needed) and are cached in
``<cache dir>/voc_labels.json``; an entry is re-parsed when its XML file's size or mtime changes.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._cache import default_cache_dir, file_stamp, load_json, save_json
from .errors import DatasetError, DatasetRootError, UnknownClassError, check_root, list_some
from .image import IMAGE_SUFFIXES
from .seg_dataset import SegDataset

__all__ = ["VOC_CLASSES", "VOCDataset", "read_split_file", "resolve_voc_split", "shipped_splits"]

logger = logging.getLogger("sipe.data")

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

SPLITS_DIR = Path(__file__).resolve().parent / "splits" / "voc"
_LABEL_CACHE_VERSION = 1


def shipped_splits() -> list[str]:
    """Names of the VOC splits shipped with the package (``train``, ``train_aug``, ``val``)."""
    return sorted(p.stem for p in SPLITS_DIR.glob("*.txt"))


def resolve_voc_split(root: Path, split: str | os.PathLike) -> Path:
    """The list file for ``split``: a shipped split name, a path to a txt file, or
    ``<root>/ImageSets/Segmentation/<split>.txt`` (in that order)."""
    s = str(split)
    if s in shipped_splits():
        return SPLITS_DIR / f"{s}.txt"
    path = Path(s).expanduser()
    if path.is_file():
        return path
    local = root / "ImageSets" / "Segmentation" / f"{s}.txt"
    if local.is_file():
        return local
    raise DatasetError(
        f"unknown split {s!r}: not a shipped split ({', '.join(shipped_splits())}), not a file, and "
        f"{local} does not exist. Pass one of those names or the path of a text file with one image "
        "name per line."
    )


def read_split_file(path: Path) -> list[str]:
    """Image names of a split file: one per line, blank lines and ``#`` comments ignored.

    Lines in the official ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` form give ``x``.
    Duplicate names are an error (every name keys its own output files).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read split file {path}: {err}") from err
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        if "/" in token or Path(token).suffix.lower() in IMAGE_SUFFIXES:
            token = Path(token).stem
        if token in seen:
            raise DatasetError(
                f"split file {path} lists {token!r} twice (lines {seen[token]} and {lineno}); remove the duplicate."
            )
        seen[token] = lineno
        names.append(token)
    return names


def parse_voc_xml(path: Path) -> list[str]:
    """Class names of every top-level ``<object>`` in a VOC annotation (parts such as 'head' excluded)."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as err:
        raise DatasetError(
            f"cannot parse annotation {path}: {err}. Restore it from the VOC2012 archive or remove the "
            "image from the split."
        ) from err
    out = []
    for obj in tree.getroot().findall("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"annotation {path} has an <object> without a <name>; fix or remove it.")
        out.append(name)
    return out


def load_voc_objects(ann_dir: Path, names: Sequence[str], cache_file: Path) -> dict[str, list[str]]:
    """Object class names per image, from the XML files through the JSON cache at ``cache_file``."""
    cache = load_json(cache_file, _LABEL_CACHE_VERSION) or {"version": _LABEL_CACHE_VERSION, "entries": {}}
    entries: dict = cache["entries"]
    out: dict[str, list[str]] = {}
    missing: list[str] = []
    todo: list[tuple[str, list[int]]] = []
    for name in names:
        try:
            stamp = file_stamp(ann_dir / f"{name}.xml")
        except FileNotFoundError:
            missing.append(name)
            continue
        entry = entries.get(name)
        if entry is not None and entry.get("stamp") == stamp:
            out[name] = entry["objects"]
        else:
            todo.append((name, stamp))
    if missing:
        shown = list_some([f"{n}.xml" for n in missing])
        raise DatasetError(
            f"{len(missing)} annotation files are missing from {ann_dir}: {shown}. Image-level labels come from "
            "the VOC XML annotations: extract Annotations/ from VOCtrainval_11-May-2012.tar, or use a split "
            "that lists only annotated images."
        )
    for name, stamp in tqdm(todo, desc="VOC labels", unit="xml", disable=len(todo) < 2000, leave=False):
        out[name] = parse_voc_xml(ann_dir / f"{name}.xml")
        entries[name] = {"stamp": stamp, "objects": out[name]}
    if todo:
        logger.info("parsed %d VOC annotations; caching labels in %s", len(todo), cache_file)
        save_json(cache_file, cache)
    return out


class VOCDataset(SegDataset):
    """PASCAL VOC 2012 (or any dataset in its layout) with labels from ``Annotations/*.xml``.

    Args:
        root: the ``VOC2012`` folder (holding ``JPEGImages/``, ``Annotations/``, ...).
        split: ``"train_aug"``, ``"train"``, ``"val"`` (shipped lists), a path to a txt file of names,
            or a name ``s`` with ``<root>/ImageSets/Segmentation/<s>.txt``.
        class_names: K class names, index 0 ``"background"`` (prepended when absent); default the 21
            VOC classes. XML object names outside this list raise :class:`UnknownClassError`.
        cache_dir: where the label cache goes (default: see ``default_cache_dir``).
        with_masks: read ground-truth masks (``SegmentationClass/``, else ``SegmentationClassAug/``);
            items of images with neither get ``mask=None``.
        skip_unlabeled: drop images whose XML lists no object (recorded in ``skipped``). Off by default:
            such an image is a negative (all background); the official splits have none.
        exif_transpose: apply EXIF orientation (off: VOC masks are drawn on the stored pixels;
            official VOC JPEGs carry no orientation). An image whose mask fits only its EXIF-turned
            size (a phone photo labelled as displayed) is read turned all the same
            (:meth:`SegDataset.exif_transpose_for`).
        image_ext: suffix of the files in ``JPEGImages/``.
    """

    mask_dir_names: tuple[str, ...] = ("SegmentationClass", "SegmentationClassAug")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | os.PathLike = "train_aug",
        *,
        class_names: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        with_masks: bool = True,
        skip_unlabeled: bool = False,
        exif_transpose: bool = False,
        image_ext: str = ".jpg",
    ) -> None:
        hint = "Point it at the VOC2012 folder (VOCdevkit/VOC2012) that holds JPEGImages/ and Annotations/."
        self.root = check_root(root, "VOC dataset root", hint)
        self.split_file = resolve_voc_split(self.root, split)
        names = read_split_file(self.split_file)
        source = f"VOC split {self.split_file}"
        image_dir = self.root / "JPEGImages"
        ann_dir = self.root / "Annotations"
        for d in (image_dir, ann_dir):
            if not d.is_dir():
                raise DatasetRootError(f"{d} does not exist: {self.root} is not in the VOC layout. {hint}")
        classes = list(class_names) if class_names is not None else list(VOC_CLASSES)
        if classes and classes[0] != "background":
            classes = ["background", *classes]

        # Existence checked up front, once: a missing file found at step 9,000 of a run is worse.
        present = set(os.listdir(image_dir))
        missing = [n for n in names if n + image_ext not in present]
        if missing:
            shown = list_some(missing)
            raise DatasetError(
                f"{len(missing)} images of {self.split_file} are missing from {image_dir}: {shown}. Complete the "
                "download, or pass a split file listing only the images you have."
            )
        self.cache_dir = default_cache_dir(self.root, cache_dir)
        objects = load_voc_objects(ann_dir, names, self.cache_dir / "voc_labels.json")

        index = {c: k for k, c in enumerate(classes)}
        labels = np.zeros((len(names), len(classes) - 1), dtype=np.float32)
        for i, n in enumerate(names):
            for obj in objects[n]:
                k = index.get(obj)
                if k is None or k == 0:
                    raise UnknownClassError(
                        f"annotation {ann_dir / (n + '.xml')} names class {obj!r}, which is not in the class list "
                        f"({', '.join(classes[1:])}). Pass class_names= including it, or fix the annotation."
                    )
                labels[i, k - 1] = 1.0

        mask_sets = []
        for d in self.mask_dir_names:
            p = self.root / d
            mask_sets.append((p, set(os.listdir(p)) if p.is_dir() else set()))
        mask_paths: list[Path | None] = []
        for n in names:
            found = next((p / f"{n}.png" for p, files in mask_sets if f"{n}.png" in files), None)
            mask_paths.append(found)

        super().__init__(
            class_names=classes,
            names=names,
            image_paths=[image_dir / f"{n}{image_ext}" for n in names],
            labels=labels,
            mask_paths=mask_paths,
            source=source,
            exif_transpose=exif_transpose,
            with_masks=with_masks,
            skip_unlabeled=skip_unlabeled,
        )

    def _mask_hint(self) -> str:
        return (
            f"Masks are read from {self.root}/SegmentationClass/ and, failing that, SegmentationClassAug/ "
            "(the SBD masks): extract them there, or evaluate on 'train' / 'val', whose masks ship with VOC2012."
        )
