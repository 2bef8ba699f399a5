"""``sipe seg``: train DeepLabV3 on pseudo masks (``sipe seg train``) and evaluate it (``sipe seg eval``)."""

from __future__ import annotations

import argparse
from typing import Any

from sipe.cli._common import (
    InputError,
    UsageError,
    add_config_args,
    add_dataset_args,
    add_device_arg,
    add_scales_arg,
    build_dataset_from_args,
    check_dataset_args,
    config_from_args,
    print_config,
    resolve_device,
    setup_logging,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "seg",
        help="train / evaluate the final segmentation network (DeepLabV3 or DeepLabV2) on pseudo masks",
        description=(
            "The last stage of WSSS: a fully supervised DeepLabV3 (default) or DeepLabV2 (model.arch=deeplabv2, "
            "the WSSS papers' network; see configs/seg_deeplabv2_voc.yaml) trained on the pseudo masks."
        ),
    )
    sub = p.add_subparsers(dest="seg_command", metavar="SEG_COMMAND")

    t = sub.add_parser(
        "train",
        help="train DeepLabV3 on pseudo-label PNGs",
        description=(
            "Train DeepLabV3 on a folder of pseudo-label PNGs (<image name>.png, 255 = ignore). Settings come "
            "from the SegTrainConfig defaults, then --config, then key=value overrides such as "
            "'pseudo_labels=runs/voc/pseudo engine.lr=0.007 model.backbone=resnet50'. Rerunning the same command "
            "resumes an interrupted run; launch with torchrun for several GPUs."
        ),
    )
    t.add_argument("--out", default="runs/seg",
                   help="run folder: checkpoints/, tb/, config.yaml (default: %(default)s)")
    add_config_args(t, "SegTrainConfig")
    t.set_defaults(func=train_handler)

    e = sub.add_parser(
        "eval",
        help="mIoU of a trained segmentation network on a split with ground truth",
        description=(
            "Per-class IoU, precision, recall and mIoU of a segmentation checkpoint on a split with ground-truth "
            "masks, with optional multi-scale + flip test-time augmentation and dense-CRF post-processing."
        ),
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint written by 'sipe seg train'")
    add_dataset_args(e, split_default="val", masks_needed=True)
    add_scales_arg(e, [1.0], "test scales, space-separated, e.g. 0.5 0.75 1.0 1.25 (default: 1.0)")
    e.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    e.add_argument(
        "--crf", action="store_true",
        help="dense-CRF post-processing of each prediction (softmax unary; deeplab-pytorch's parameters unless "
             "--crf-param says otherwise)",
    )
    e.add_argument(
        "--crf-param", action="append", default=[], metavar="KEY=VALUE",
        help="override a CRF parameter (iter_max=10 pos_w=3 pos_xy_std=1 bi_w=4 bi_xy_std=67 bi_rgb_std=3); repeatable",
    )
    e.add_argument("--workers", type=int, default=2, help="image-decoding workers (default: %(default)s)")
    e.add_argument("--out", default=None, help="also write the report as JSON to this file")
    add_device_arg(e)
    e.set_defaults(func=eval_handler)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def train_handler(args: argparse.Namespace) -> int:
    from sipe.config.seg import SegTrainConfig

    cfg = config_from_args(SegTrainConfig, args)  # config errors before torch loads
    if args.print_config:
        return print_config(cfg)
    cfg.pseudo_label_dir()
    setup_logging()
    from sipe.seg.train import train_seg

    path = train_seg(cfg, args.out)
    print(f"checkpoint: {path}")
    return 0


def eval_handler(args: argparse.Namespace) -> int:
    from sipe import io as sio

    setup_logging()
    crf_params = parse_crf_params(args.crf_param)
    check_dataset_args(args, masks_needed=True)  # before torch loads and the (slow) checkpoint load
    sio.checkpoint_file(args.checkpoint, made_by="sipe seg train")
    dataset = build_dataset_from_args(args, masks_needed=True)  # its errors, too, before torch loads
    from sipe import metrics as evaluation
    from sipe.seg.evaluate import evaluate_seg
    from sipe.seg.model import load_seg_checkpoint

    device = resolve_device(args.device)
    model, spec = load_seg_checkpoint(args.checkpoint)
    model.to(device)
    if (args.dataset in ("voc", "custom") and spec.class_names and args.class_names is None
            and list(dataset.class_names) != list(spec.class_names)):
        # The model's class list, not the one a VOC default or a custom labels file gives.
        dataset = build_dataset_from_args(args, masks_needed=True, class_names=list(spec.class_names))
    if spec.class_names and list(spec.class_names) != list(dataset.class_names):
        raise InputError(
            f"{args.checkpoint} was trained for classes {spec.class_names}, the dataset has "
            f"{list(dataset.class_names)}"
        )
    unreadable = dataset.drop_small(1)  # skipped by name (decoded once, cached), not a DataLoader traceback
    report = evaluate_seg(
        model, dataset, args.scales, args.flip, args.crf, crf_params=crf_params, num_workers=args.workers
    )
    report = {"dataset": args.dataset, "split": args.split, "checkpoint": str(args.checkpoint), **report,
              "skipped_unreadable": unreadable}
    print(evaluation.format_report(report))
    if args.out:
        evaluation.write_report(args.out, report)
        print(f"report written to {args.out}")
    return 0


def parse_crf_params(items: list[str]):
    """``["bi_w=5", ...]`` -> :class:`sipe.seg.dense_crf.DenseCRFParams` (``UsageError`` on a bad item)."""
    import dataclasses

    from sipe.seg.dense_crf import DenseCRFParams

    fields = {f.name: f.type for f in dataclasses.fields(DenseCRFParams)}
    values: dict[str, float | int] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise UsageError(f"--crf-param {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        try:
            values[key] = int(text) if key == "iter_max" else float(text)
        except ValueError:
            raise UsageError(f"--crf-param {item!r}: {text!r} is not a number") from None
    return DenseCRFParams(**values)
