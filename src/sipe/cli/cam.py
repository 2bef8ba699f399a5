"""``sipe cam``: multi-scale IS-CAM for a split, one file per image (resumable, torchrun-sharded)."""

from __future__ import annotations

import argparse
import json

from sipe.cli._common import (
    InputError,
    UsageError,
    add_dataset_args,
    add_device_arg,
    add_scales_arg,
    build_dataset_from_args,
    check_dataset_args,
    setup_logging,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cam", help="generate multi-scale IS-CAMs for a dataset split",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a 'sipe train' checkpoint or an official final.pth")
    add_dataset_args(p)
    p.add_argument("--out", required=True, help="output folder (is_cam/, cam/, overlays/ inside)")
    add_scales_arg(p, None, "test scales, space-separated (default: the checkpoint's method.cam_scales, "
                   "officially 1.0 0.5 1.5 2.0)")
    p.add_argument("--no-flip", action="store_true", help="do not fuse the horizontal flip")
    p.add_argument("--format", default="npz", choices=("npz", "npy"),
                   help="npz: compact float16 (default); npy: the official {'keys','IS_CAM'} layout")
    p.add_argument("--save-cam", action="store_true", help="also save the fused plain CAM (CAM baseline)")
    p.add_argument("--overlays", action="store_true", help="write a heat-map PNG per image and class")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision of the backbone (IPE stays float32)")
    p.add_argument("--labels-from", default="dataset", choices=("dataset", "classifier"),
                   help="which classes each IS-CAM keeps: the split's image-level labels (default), or those "
                   "the network's classifier finds (for images whose tags are unknown)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="--labels-from classifier: a class is present when its sigmoid score exceeds this "
                   "(default: the checkpoint's method.score_threshold, 0.5)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding and resizing images")
    p.add_argument("--batch-images", type=int, default=1,
                   help="images of one size that go through the backbone together (at scale 1.0; fewer at larger "
                   "scales). Default 1: one image and its flip at a time")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipe import io as sio
    from sipe.config import STRIDE

    setup_logging()
    check_dataset_args(args)
    if args.score_threshold is not None and args.labels_from != "classifier":
        raise UsageError("--score-threshold applies to --labels-from classifier only")
    if args.batch_images < 1:
        raise UsageError(f"--batch-images must be >= 1, got {args.batch_images}")
    if args.score_threshold is not None and not 0.0 <= args.score_threshold < 1.0:
        raise UsageError(f"--score-threshold must be in [0, 1), got {args.score_threshold}")
    # Checked before torch loads, so that a wrong path or dataset is reported at once.
    sio.checkpoint_file(args.checkpoint, made_by="sipe train")
    dataset = build_dataset_from_args(args, with_masks=False)
    dataset.drop_small(STRIDE)  # every image decoded once (cached); bad ones skipped by name
    import torch.distributed as dist

    from sipe.cams.generate import CamConfig, generate_cams
    from sipe.config import MethodConfig
    from sipe.engine import setup_distributed
    from sipe.models.checkpoint import load_checkpoint

    info = setup_distributed(args.device)
    model, meta = load_checkpoint(args.checkpoint)  # with the method switches it was trained with
    method = MethodConfig.from_checkpoint(meta)
    if model.num_classes != dataset.num_classes:
        raise InputError(f"checkpoint {args.checkpoint} has {model.num_classes} classes but dataset {dataset!r} "
                         f"has {dataset.num_classes}; use the checkpoint trained on this dataset")
    model.to(info.device)
    cfg = CamConfig(
        scales=method.cam_scales if args.scales is None else tuple(args.scales),
        flip=not args.no_flip,
        format=args.format,
        save_cam=args.save_cam,
        overlays=args.overlays,
        precision=args.precision,
        channels_last=args.channels_last,
        num_workers=args.workers,
        batch_images=args.batch_images,
        labels_from=args.labels_from,
        score_threshold=method.score_threshold if args.score_threshold is None else args.score_threshold,
    )
    summary = generate_cams(model, dataset, args.out, cfg, rank=info.rank, world_size=info.world_size)
    if info.distributed:
        dist.barrier()
        dist.destroy_process_group()
    print(json.dumps({"rank": info.rank, **{k: v for k, v in summary.items() if k != "skipped_names"}}))
    if not summary["written"] and not summary["existing"]:
        raise InputError(f"no IS-CAM written to {args.out}: every image was skipped (listed in "
                         f"{args.out}/skipped.tsv)")
    return 0
