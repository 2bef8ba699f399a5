"""The dataset kinds (``data.kind``, ``--dataset``): the one table of their names and of the options each takes.

Torch-free and import-free, so that the config layer and the command line check a kind and its options
before anything loads. :func:`sipe.data.build_dataset` builds each kind (its builders are keyed by these
names, tested).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASET_KINDS", "DatasetKind", "dataset_kind", "kinds_with"]


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset and what it takes.

    name: ``data.kind`` / ``--dataset``.
    root: what ``data.root`` / ``--root`` points at.
    split: what ``data.split`` / ``--split`` names.
    fixed_classes: where its class list comes from when it takes none (``None``: it takes
        ``data.class_names`` / ``--class-names``).
    mask_dir: its ground-truth masks come from a folder given apart (``data.mask_dir`` / ``--mask-dir``).
    cache_dir: it keeps label / mask caches (``data.cache_dir``).
    """

    name: str
    root: str
    split: str
    fixed_classes: str | None = None
    mask_dir: bool = False
    cache_dir: bool = False

    @property
    def takes_class_names(self) -> bool:
        return self.fixed_classes is None


DATASET_KINDS: dict[str, DatasetKind] = {
    k.name: k
    for k in (
        DatasetKind("voc", root="the VOC2012 folder", split="train_aug/train/val or a txt file", cache_dir=True),
        DatasetKind("coco", root="the COCO folder", split="train/val", fixed_classes="the 80 COCO categories",
                    cache_dir=True),
        DatasetKind("custom", root="the image folder", split="the labels CSV/JSON", mask_dir=True),
        DatasetKind("synthetic", root="the generated folder", split="train/val",
                    fixed_classes="the data set's class_names.txt"),
    )
}


def dataset_kind(name: str, key: str = "data.kind") -> DatasetKind:
    """The kind called ``name``; ``ValueError`` naming ``key`` and the kinds there are for any other."""
    kind = DATASET_KINDS.get(name)
    if kind is None:
        raise ValueError(f"{key} must be one of {', '.join(DATASET_KINDS)}, got {name!r}")
    return kind


def kinds_with(what: str) -> list[str]:
    """The names of the kinds that take ``what``: ``"class_names"`` or ``"mask_dir"``."""
    if what == "class_names":
        return [k.name for k in DATASET_KINDS.values() if k.takes_class_names]
    if what == "mask_dir":
        return [k.name for k in DATASET_KINDS.values() if k.mask_dir]
    raise ValueError(f"unknown dataset option {what!r}; use class_names or mask_dir")
