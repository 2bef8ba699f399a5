"""``sipe refine``: IS-CAMs to pseudo masks (dense-CRF confident regions, IRN, random walk, CRF labels)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sipe.cli._common import (
    InputError,
    add_config_args,
    add_dataset_args,
    add_device_arg,
    build_dataset_from_args,
    config_from_args,
    print_config,
    setup_logging,
)

EPILOG = """\
the official VOC pipeline (IS-CAMs of train_aug from `sipe cam --split train_aug --out runs/cam`):
  sipe refine crf-regions --root VOC2012 --split train_aug --cam-dir runs/cam/is_cam --out runs/ir_label
  sipe refine train-irn --root VOC2012 --split train_aug --label-dir runs/ir_label --mean-split train \\
      --out runs/irn
  sipe refine labels --root VOC2012 --split train_aug --irn runs/irn/irn.pt --cam-dir runs/cam/is_cam \\
      --out runs/pseudo
  sipe eval --dataset voc --root VOC2012 --split train --kind labels --pred runs/pseudo
without IRN (on COCO the authors train on the crf-regions output; `crf` labels every pixel):
  sipe refine crf --dataset coco --root COCO --split train --cam-dir runs/cam/is_cam --out runs/pseudo_crf

Every step skips images whose output exists (rerun to resume); train-irn resumes from its last checkpoint.
Under torchrun, `labels` shards the images over the processes and `train-irn` trains with DDP.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refine", help="turn IS-CAMs into pseudo masks (CRF, IRN, random walk)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)

    q = steps.add_parser("crf-regions", help="confident fg/bg regions by dense CRF (IRN training labels)",
                         description="The official cam2ir step: CRF-refined IS-CAM argmax with and without the "
                         "background channel scaled; 255 where the two disagree.")
    _dataset_and_cams(q, "train_aug")
    q.add_argument("--bg-scale", type=float, default=0.5, help="background channel factor of the second pass")
    _parallel(q)
    q.set_defaults(func=run_crf_regions)

    q = steps.add_parser("crf", help="pseudo labels by dense CRF on the IS-CAM argmax (no IRN)",
                         description="Dense-CRF refinement of the IS-CAM argmax as the final pseudo labels, a "
                         "class for every pixel. On COCO the authors replace IRN by the CRF and train on the "
                         "output of `crf-regions` (255 = uncertain); this is its foreground pass alone.")
    _dataset_and_cams(q, "train")
    _parallel(q)
    q.set_defaults(func=run_crf)

    q = steps.add_parser("train-irn", help="train IRN on confident regions (official recipe)",
                         description="Train IRN's boundary and displacement branches on a frozen backbone (ResNet-50 "
                         "by default; backbone= takes any registry name: resnet18..101, timm:<model>, "
                         "module:function). "
                         "Defaults are the official recipe; a YAML file and KEY=VALUE overrides change them "
                         "(e.g. engine.batch_size=16 backbone=resnet18 weights=null).")
    add_dataset_args(q, split_default="train_aug")
    q.add_argument("--label-dir", required=True, help="confident-region PNGs from `sipe refine crf-regions`")
    q.add_argument("--out", required=True, help="run folder: checkpoints/, tb/, config.yaml, irn.pt")
    q.add_argument("--mean-split", default=None,
                   help="split over which the mean displacement is measured (official VOC: train; "
                        "default: the training split)")
    add_config_args(q, "IRNConfig")
    q.set_defaults(func=run_train_irn)

    q = steps.add_parser("labels", help="pseudo labels by random walk over IRN boundaries",
                         description="The official make_seg_labels step: IS-CAM^1.5 propagated by a random "
                         "walk over IRN's boundary map; palette PNGs in the VOC colours.")
    _dataset_and_cams(q, "train")
    q.add_argument("--irn", required=True, help="irn.pt written by `sipe refine train-irn`")
    q.add_argument("--beta", type=float, default=10.0, help="affinity exponent (official 10)")
    q.add_argument("--exp-times", type=int, default=8, help="log2 of the random-walk steps (official 8)")
    q.add_argument("--radius", type=int, default=5, help="transition radius at stride 4 (official 5)")
    q.add_argument("--canvas", type=int, default=0,
                   help="pad images to at least CANVAS x CANVAS (the official code pads to 512; "
                        "default: only to a multiple of 16)")
    add_device_arg(q)
    q.add_argument("--overwrite", action="store_true", help="recompute images whose PNG exists")
    q.set_defaults(func=run_labels)


def _dataset_and_cams(q: argparse.ArgumentParser, split: str) -> None:
    add_dataset_args(q, split_default=split)
    q.add_argument("--cam-dir", required=True, help="folder of IS-CAM files (the is_cam/ folder of `sipe cam`)")
    q.add_argument("--out", required=True, help="output folder of palette PNGs")


def _parallel(q: argparse.ArgumentParser) -> None:
    q.add_argument("--workers", type=int, default=None, help="CRF processes (default: all available cores)")
    q.add_argument("--overwrite", action="store_true", help="recompute images whose PNG exists")


def _folder(path: str, option: str, fix: str) -> None:
    """``option``'s ``path`` must be a folder (checked before torch loads); else the error names ``fix``."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{option} {path} does not exist; {fix}")


def _cam_dir(args: argparse.Namespace) -> None:
    _folder(args.cam_dir, "--cam-dir", "run `sipe cam` for this split first and pass its is_cam/ folder")


def _dataset(args: argparse.Namespace, split: str | None = None):
    if split is not None:
        args = argparse.Namespace(**{**vars(args), "split": split})
    return build_dataset_from_args(args, with_masks=False)


def _dataset_with_cams(args: argparse.Namespace):
    """The split's images less those `sipe cam` skipped on purpose (so their missing IS-CAMs are no error)."""
    dataset = _dataset(args)
    dataset.drop_skipped_earlier(args.cam_dir)
    return dataset


def _report(stats, out: str, **extra: int) -> int:
    """One JSON line of counts (``skipped_before``: images the dataset left out before the step, e.g. those
    `sipe cam` skipped; ``skipped_bad``: images this step could not read), all listed in OUT/skipped.tsv."""
    print(json.dumps({**extra, "written": stats.written, "skipped_existing": stats.skipped,
                      "skipped_bad": len(stats.bad)}))
    if stats.bad and not stats.written and not stats.skipped:
        raise InputError(f"nothing written to {out}: {stats.bad.summary()} (listed in {out}/skipped.tsv)")
    return 0


def run_crf_regions(args: argparse.Namespace) -> int:
    setup_logging()
    _cam_dir(args)
    dataset = _dataset_with_cams(args)
    from sipe.refine.crf import make_confident_regions

    stats = make_confident_regions(dataset, args.cam_dir, args.out, bg_scale=args.bg_scale,
                                   num_workers=args.workers, overwrite=args.overwrite)
    return _report(stats, args.out, skipped_before=len(dataset.skipped))


def run_crf(args: argparse.Namespace) -> int:
    setup_logging()
    _cam_dir(args)
    dataset = _dataset_with_cams(args)
    from sipe.refine.crf import make_crf_labels

    stats = make_crf_labels(dataset, args.cam_dir, args.out, num_workers=args.workers,
                            overwrite=args.overwrite)
    return _report(stats, args.out, skipped_before=len(dataset.skipped))


def run_train_irn(args: argparse.Namespace) -> int:
    from sipe.config.irn import IRNConfig

    cfg = config_from_args(IRNConfig, args)  # config and dataset errors before torch loads
    if args.print_config:
        return print_config(cfg)
    setup_logging()
    train_set = _dataset(args)
    mean_set = _dataset(args, args.mean_split) if args.mean_split is not None else None
    _folder(args.label_dir, "--label-dir",
            "make the confident regions first with 'sipe refine crf-regions' (its --out)")
    from sipe.engine import is_main_process
    from sipe.refine.train_irn import train_irn

    train_irn(train_set, args.label_dir, args.out, cfg, mean_set=mean_set)
    if is_main_process():
        print(f"IRN weights: {args.out}/irn.pt")
    return 0


def run_labels(args: argparse.Namespace) -> int:
    from sipe import io as sio

    setup_logging()
    _cam_dir(args)
    sio.checkpoint_file(args.irn, made_by="sipe refine train-irn")
    dataset = _dataset_with_cams(args)
    import torch.distributed as dist

    from sipe.engine import setup_distributed
    from sipe.refine.pseudo import make_pseudo_labels
    from sipe.refine.random_walk import Walk
    from sipe.refine.train_irn import load_irn

    info = setup_distributed(args.device)
    try:
        model = load_irn(args.irn).to(info.device)
        stats = make_pseudo_labels(model, dataset, args.cam_dir, args.out, canvas=args.canvas,
                                   walk=Walk(beta=args.beta, exp_times=args.exp_times, radius=args.radius),
                                   overwrite=args.overwrite)
    finally:
        if info.distributed:
            dist.barrier()
            dist.destroy_process_group()
    return _report(stats, args.out, rank=info.rank, skipped_before=len(dataset.skipped))
