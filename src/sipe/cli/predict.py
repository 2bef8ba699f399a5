"""``sipe predict``: masks for new images from a segmentation checkpoint, or from SIPE's IS-CAM."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sipe.cli._common import InputError, UsageError, add_device_arg, add_scales_arg, resolve_device, setup_logging


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment new images (palette PNGs + overlays)",
        description=(
            "Segment image files and folders of images. With a 'sipe seg train' checkpoint the segmentation "
            "network predicts every class; with a SIPE checkpoint ('sipe train', or the authors') and --labels, "
            "the mask is the argmax of the multi-scale IS-CAM over the background and the named classes. "
            "Writes OUT/<stem>.png (palette PNG, pixel value = class index) and OUT/overlay/<stem>.jpg."
        ),
    )
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--checkpoint", required=True, help="segmentation or SIPE checkpoint")
    p.add_argument("--labels", default=None, help="SIPE checkpoints: the image-level classes, e.g. cat,sofa")
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


def _sipe_class_names(meta: dict, num_classes: int, given: str | None) -> list[str]:
    from sipe.data import VOC_CLASSES

    if given:
        names = [c.strip() for c in given.split(",") if c.strip()]
        if names and names[0] != "background":
            names = ["background", *names]
    elif meta.get("class_names") or (meta.get("meta") or {}).get("class_names"):
        # sipe checkpoints keep them in the engine's "meta" entry; older layouts at the top level.
        names = list(meta.get("class_names") or meta["meta"]["class_names"])
    elif num_classes == len(VOC_CLASSES):
        print("note: the checkpoint stores no class names; using the 20 VOC classes", file=sys.stderr)
        names = list(VOC_CLASSES)
    else:
        raise InputError(
            f"the checkpoint stores no class names and has {num_classes} classes; pass --class-names a,b,c "
            f"({num_classes - 1} foreground classes in training order)"
        )
    if len(names) != num_classes:
        raise UsageError(f"{len(names)} class names (with background) for a {num_classes}-class checkpoint")
    return names


def handler(args: argparse.Namespace) -> int:
    from sipe import io as sio
    from sipe.data.image import collect_images

    # Checked before torch loads, so that a wrong path is reported at once.
    sio.checkpoint_file(args.checkpoint, made_by="sipe train' or 'sipe seg train")
    collect_images(args.inputs)
    from sipe.cams.predict import labels_from_names, predict_paths_is_cam
    from sipe.config import MethodConfig
    from sipe.data.classes_file import write_classes_file
    from sipe.models.checkpoint import checkpoint_kind, read_checkpoint, sipe_model_from_checkpoint
    from sipe.seg.model import seg_model_from_checkpoint
    from sipe.seg.predict import predict_paths

    setup_logging()
    flip, overlay = not args.no_flip, not args.no_overlay
    device = resolve_device(args.device)
    ckpt = read_checkpoint(args.checkpoint, made_by="sipe train' or 'sipe seg train")
    if checkpoint_kind(ckpt) == "seg":
        if args.labels is not None:
            raise UsageError(
                "--labels selects IS-CAM masks and needs a SIPE checkpoint; this is a segmentation "
                "checkpoint, which predicts every class by itself (drop --labels)"
            )
        model, spec = seg_model_from_checkpoint(ckpt, str(args.checkpoint))
        names = (ckpt.get("meta") or {}).get("class_names") or spec.class_names
        del ckpt
        result = predict_paths(
            model.to(device), args.inputs, args.out, scales=args.scales or (1.0,), flip=flip,
            overlay=overlay, alpha=args.alpha,
        )
    else:
        if args.labels is None:
            raise UsageError(
                f"{args.checkpoint} is a SIPE checkpoint: pass the image-level classes with --labels cat,sofa "
                "(or use a segmentation checkpoint from 'sipe seg train')"
            )
        model, meta = sipe_model_from_checkpoint(ckpt, f"checkpoint {args.checkpoint}")
        del ckpt
        method = MethodConfig.from_checkpoint(meta)
        names = _sipe_class_names(meta, model.num_classes, args.class_names)
        labels = labels_from_names(args.labels.split(","), names)
        result = predict_paths_is_cam(
            model.to(device), args.inputs, labels, args.out, scales=args.scales or method.cam_scales, flip=flip,
            overlay=overlay, alpha=args.alpha,
        )
    if names:
        write_classes_file(args.out, names)
    if not result.labels:
        raise InputError(f"no mask written to {args.out}: {result.skipped.summary()} (listed in "
                         f"{args.out}/skipped.tsv)")
    skipped = f" ({result.skipped.summary()}, listed in {args.out}/skipped.tsv)" if len(result.skipped) else ""
    print(f"wrote {len(result.labels)} masks to {args.out}{skipped}")
    return 0
