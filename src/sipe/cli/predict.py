"""``sipe predict``: masks for new images from a segmentation checkpoint, or from SIPE's IS-CAM.

Segment image files and folders of images. With a 'sipe seg train' checkpoint the segmentation network
predicts every class; with a SIPE checkpoint ('sipe train', or the authors') the mask is the argmax of
the multi-scale IS-CAM over the background and the image's classes: those named by --labels or
--labels-file, else those the classifier finds (sigmoid score above --score-threshold); an image with
none is all background. The same code as sipe.Predictor. Writes OUT/<stem>.png (palette PNG, pixel value
= class index) and OUT/overlay/<stem>.jpg.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sipe.cli._common import InputError, UsageError, add_device_arg, add_scales_arg, resolve_device, setup_logging


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("predict", help="segment new images (palette PNGs + overlays)", description=__doc__)
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--checkpoint", required=True, help="segmentation or SIPE checkpoint")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--labels", default=None,
                       help="SIPE checkpoints: the image-level classes of every input, e.g. cat,sofa "
                       "(default: decided by the classifier)")
    given.add_argument("--labels-file", default=None,
                       help="SIPE checkpoints: a CSV (image,labels; classes separated by ';', an empty cell: "
                       "none) or JSON file with the classes of each input, matched by file name")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="SIPE checkpoints without --labels: a class is present when its classifier score "
                   "(sigmoid) exceeds this (default: the checkpoint's method.score_threshold, 0.5)")
    p.add_argument(
        "--class-names",
        default=None,
        help="SIPE checkpoints without stored class names: the foreground classes in order (a,b,c); "
        "21-class checkpoints default to the VOC classes",
    )
    p.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    add_scales_arg(p, None, "test scales, space-separated (default: 1.0; IS-CAM: the checkpoint's "
                   "method.cam_scales, officially 1.0 0.5 1.5 2.0)")
    p.add_argument("--no-flip", action="store_true", help="do not average with the horizontally flipped image")
    p.add_argument("--no-overlay", action="store_true", help="write the label PNGs only")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="overlay opacity of the class colours (default: %(default)s)")
    add_device_arg(p)
    p.set_defaults(func=handler)


def read_labels_by_file_name(path: str) -> dict[str, list[str]]:
    """``--labels-file``: ``{file name: class names}`` from a CSV / JSON labels file (sipe's custom format)."""
    from sipe.data.custom import read_labels_file

    out: dict[str, list[str]] = {}
    for image, classes, where in read_labels_file(path):
        name = Path(image).name
        if name in out:
            raise InputError(f"{where}: {name} is listed twice in {path}; inputs are matched by file name")
        out[name] = classes
    return out


def handler(args: argparse.Namespace) -> int:
    from sipe import io as sio
    from sipe.data.image import collect_images

    # Checked before torch loads, so that a wrong path is reported at once.
    sio.checkpoint_file(args.checkpoint, made_by="sipe train' or 'sipe seg train")
    files = collect_images(args.inputs)
    if args.score_threshold is not None and (args.labels is not None or args.labels_file is not None):
        raise UsageError("--score-threshold decides the classes when no labels are given; drop it or the labels")
    labels: list[str] | dict[str, list[str]] | None = None
    if args.labels is not None:
        labels = [c for c in args.labels.split(",") if c.strip()]
        if not labels:
            raise UsageError("--labels names no class; give e.g. --labels cat,sofa (or leave it out: the "
                             "classifier decides)")
    elif args.labels_file is not None:
        labels = read_labels_by_file_name(args.labels_file)
        missing = [f.name for f in files if f.name not in labels]
        if missing:
            raise InputError(f"{len(missing)} inputs have no row in {args.labels_file}, e.g. {missing[:3]}; add "
                             "one per image (an empty labels cell: none of the classes)")
    from sipe.data.classes_file import write_classes_file
    from sipe.predictor import Predictor

    setup_logging()
    class_names = args.class_names.split(",") if args.class_names else None
    predictor = Predictor.from_checkpoint(
        args.checkpoint, resolve_device(args.device), scales=args.scales, flip=not args.no_flip,
        score_threshold=args.score_threshold, class_names=class_names,
    )
    if predictor.kind == "seg" and labels is not None:
        raise UsageError(
            f"--labels{'-file' if args.labels is None else ''} selects IS-CAM masks and needs a SIPE checkpoint; "
            "this is a segmentation checkpoint, which predicts every class by itself (drop it)"
        )
    result = predictor.predict_files(args.inputs, args.out, labels, overlay=not args.no_overlay, alpha=args.alpha)
    if result.labels:
        write_classes_file(args.out, predictor.class_names)  # pixel value -> class name and colour
    if not result.labels:
        raise InputError(f"no mask written to {args.out}: {result.skipped.summary()} (listed in "
                         f"{args.out}/skipped.tsv)")
    skipped = f" ({result.skipped.summary()}, listed in {args.out}/skipped.tsv)" if len(result.skipped) else ""
    print(f"wrote {len(result.labels)} masks to {args.out}{skipped}")
    from sipe.predictor import prediction_summary

    print(prediction_summary(args.out))
    return 0
