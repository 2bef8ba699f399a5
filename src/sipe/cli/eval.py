"""``sipe eval``: mIoU of saved IS-CAMs, plain CAMs (threshold sweep) or label PNGs over a split."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate IS-CAMs, CAMs or label PNGs against ground-truth masks (per-class IoU, mIoU)",
        description=(
            "Evaluate the predictions in --pred against the ground-truth masks of a split: per-class IoU, "
            "precision and recall, mIoU. --kind is_cam takes the argmax of saved IS-CAMs; --kind cam sweeps "
            "the background threshold of saved plain CAMs and reports the best; --kind labels reads "
            "<name>.png label maps (palette or greyscale PNGs)."
        ),
    )
    p.add_argument("--dataset", required=True, choices=["voc", "coco", "custom", "synthetic"])
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument(
        "--split",
        default="train",
        help="split to evaluate (voc: train, val, train_aug or a txt file; coco, synthetic: train, val); default train",
    )
    p.add_argument("--pred", required=True, help="folder of predictions (<name>.npz/.npy or <name>.png)")
    p.add_argument("--kind", required=True, choices=["is_cam", "cam", "labels"], help="what --pred holds")
    p.add_argument("--out", default=None, help="also write the report as JSON to this file")
    p.add_argument(
        "--labels", default=None, help="custom dataset: CSV or JSON labels file listing the images (instead of --split)"
    )
    p.add_argument("--masks", default=None, help="custom dataset: folder of ground-truth <name>.png index masks")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=None,
        help="--kind cam: background thresholds to sweep (default 0.05, 0.10, ..., 0.90)",
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out images without a prediction file (counted in the report) instead of stopping",
    )
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from sipe import data, evaluation

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    kw: dict[str, Any] = {}
    split = args.split
    if args.dataset == "custom":
        # A custom dataset's "split" is its labels file (sipe.data.build_dataset).
        if args.labels is None or args.masks is None:
            print("sipe eval: --dataset custom needs --labels FILE and --masks DIR", file=sys.stderr)
            return 2
        split = args.labels
        kw["mask_dir"] = args.masks
    elif args.labels is not None or args.masks is not None:
        print("sipe eval: --labels and --masks apply to --dataset custom only", file=sys.stderr)
        return 2
    if args.thresholds is not None and args.kind != "cam":
        print("sipe eval: --thresholds applies to --kind cam only", file=sys.stderr)
        return 2
    opts: dict[str, Any] = {"missing": "skip" if args.skip_missing else "error"}
    if args.thresholds is not None:
        opts["thresholds"] = args.thresholds
    try:
        dataset = data.build_dataset(args.dataset, args.root, split, **kw)
        report = evaluation.evaluate(args.kind, args.pred, dataset, **opts)
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Bad input is reported in one line; the message names the file and the fix.
        print(f"sipe eval: error: {e}", file=sys.stderr)
        return 1
    report = {"dataset": args.dataset, "split": str(split), "pred": str(args.pred), **report}
    print(evaluation.format_report(report))
    if args.out:
        evaluation.write_report(args.out, report)
        print(f"report written to {args.out}")
    return 0
