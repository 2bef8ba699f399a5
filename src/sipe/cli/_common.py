"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def add_dataset_args(parser: argparse.ArgumentParser, split_default: str = "train") -> None:
    """``--dataset/--root/--split`` plus the custom-dataset options."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset", default="voc", choices=("voc", "coco", "custom", "synthetic"), help="dataset kind")
    g.add_argument("--root", required=True, help="dataset root (VOC2012 folder, COCO folder, or custom image folder)")
    g.add_argument("--split", default=split_default,
                   help="split name (voc: train_aug/train/val or a txt file; coco: train/val) or, for custom, "
                        "the labels CSV/JSON")
    g.add_argument("--class-names", default=None,
                   help="custom: comma-separated class list (default: inferred from the labels file)")
    g.add_argument("--mask-dir", default=None, help="custom: folder of ground-truth masks")


def build_dataset_from_args(args: argparse.Namespace, **kwargs: Any):
    """The :class:`sipe.data.base.SegDataset` the ``--dataset`` options describe."""
    from sipe.data import build_dataset

    if args.dataset == "custom":
        if args.class_names:
            kwargs["class_names"] = [c.strip() for c in args.class_names.split(",") if c.strip()]
        if args.mask_dir:
            kwargs["mask_dir"] = args.mask_dir
    return build_dataset(args.dataset, args.root, args.split, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
