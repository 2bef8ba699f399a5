"""``sipe cam``: multi-scale IS-CAM for a split, one file per image (resumable, torchrun-sharded)."""

from __future__ import annotations

import argparse
import json

from sipe.cli._common import (
    INPUT_ERROR,
    USAGE_ERROR,
    add_dataset_args,
    add_device_arg,
    build_dataset_from_args,
    check_dataset_args,
    fail,
    setup_logging,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cam", help="generate multi-scale IS-CAMs for a dataset split",
                       description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a 'sipe train' checkpoint or an official final.pth")
    add_dataset_args(p)
    p.add_argument("--out", required=True, help="output folder (is_cam/, cam/, overlays/ inside)")
    p.add_argument("--scales", default="1.0,0.5,1.5,2.0", help="comma-separated scales (official default)")
    p.add_argument("--no-flip", action="store_true", help="do not fuse the horizontal flip")
    p.add_argument("--format", default="npz", choices=("npz", "npy"),
                   help="npz: compact float16 (default); npy: the official {'keys','IS_CAM'} layout")
    p.add_argument("--save-cam", action="store_true", help="also save the fused plain CAM (CAM baseline)")
    p.add_argument("--overlays", action="store_true", help="write a heat-map PNG per image and class")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision of the backbone (IPE stays float32)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding and resizing images")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from sipe.cams.generate import CamConfig, generate_cams
    from sipe.config import STRIDE
    from sipe.engine import setup_distributed
    from sipe.models.checkpoint import load_checkpoint

    setup_logging()
    try:
        info = setup_distributed(args.device)
        check_dataset_args(args)
    except ValueError as err:  # dataset options that do not fit together, a CUDA device not here
        return fail("cam", err, USAGE_ERROR)
    try:
        dataset = build_dataset_from_args(args, with_masks=False)
        dataset.drop_small(STRIDE)  # every image decoded once (cached); bad ones skipped by name
    except (ValueError, FileNotFoundError) as err:  # DatasetError, DatasetRootError and other bad input
        return fail("cam", err, INPUT_ERROR)
    model, _ = load_checkpoint(args.checkpoint)
    if model.num_classes != dataset.num_classes:
        return fail("cam", f"checkpoint {args.checkpoint} has {model.num_classes} classes but dataset {dataset!r} "
                    f"has {dataset.num_classes}; use the checkpoint trained on this dataset", INPUT_ERROR)
    model.to(info.device)
    cfg = CamConfig(
        scales=tuple(float(s) for s in args.scales.split(",")),
        flip=not args.no_flip,
        format=args.format,
        save_cam=args.save_cam,
        overlays=args.overlays,
        precision=args.precision,
        channels_last=args.channels_last,
        num_workers=args.workers,
    )
    summary = generate_cams(model, dataset, args.out, cfg, rank=info.rank, world_size=info.world_size)
    if info.distributed:
        dist.barrier()
        dist.destroy_process_group()
    print(json.dumps({"rank": info.rank, **{k: v for k, v in summary.items() if k != "skipped_names"}}))
    if not summary["written"] and not summary["existing"]:
        return fail("cam", f"no IS-CAM written to {args.out}: every image was skipped (listed in "
                    f"{args.out}/skipped.tsv)", INPUT_ERROR)
    return 0
