"""Segmentation on a skewed synthetic set: uniform vs repeat-factor sampling (docs/skewed.md).

Usage: python benchmarks/bench_skewed.py [--seeds 0 1 2] [--n-train 120] [--steps 300] [--threads 1]
       [--out /tmp/skewed] [--sampling uniform repeat_factor]

Per seed: the synthetic generator with class weights 60 / 20 / 10 / 5 (4 classes, demo image size
96-160 px, at most 2 objects), stand-in pseudo labels = the ground-truth masks dilated by 2 px (objects
bleed into the background, as CAM-based labels do), then DeepLabV3-ResNet-18 (random init, trained batch
norm, crop 96, batch 8, lr 0.01) for ``--steps`` steps with each sampling. Scored against the ground truth
on the training images (as a run scores a folder without a held-out split) and on 60 held-out images:
per-class IoU of the pseudo labels and of the network, and each class's share of predicted pixels
against its share in the pseudo labels. Prints one JSON line per (seed, sampling) and writes them to OUT.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import grey_dilation

from sipe.config.seg import SegModelConfig, SegTrainConfig
from sipe.data import generate_synthetic
from sipe.data.synthetic import SyntheticDataset
from sipe.io import save_label_png
from sipe.metrics.confusion import ConfusionMatrix
from sipe.seg.evaluate import evaluate_seg
from sipe.seg.train import train_seg


def _pseudo_labels(ds: SyntheticDataset, folder: Path) -> dict:
    """Dilated ground truth as pseudo labels; returns their score against the ground truth."""
    cm = ConfusionMatrix(len(ds.class_names))
    for i in range(len(ds)):
        gt = ds.read_mask(i)
        pseudo = grey_dilation(gt, size=(5, 5)).astype(np.uint8)
        save_label_png(folder / f"{ds.names[i]}.png", pseudo)
        cm.update(torch.from_numpy(pseudo.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))
    return cm.report(ds.class_names)


def _summary(report: dict, pseudo_share: np.ndarray | None = None) -> dict:
    rows = report["classes"]
    pred = np.array([r["pred_pixels"] for r in rows], np.float64)
    out = {"miou": round(report["miou"], 4), "iou": [round(r["iou"] or 0.0, 3) for r in rows],
           "pred_share": [round(x, 3) for x in pred / pred.sum()]}
    if pseudo_share is not None:
        pairs = zip(out["pred_share"], pseudo_share, strict=True)
        out["share_ratio"] = [round(a / b, 2) if b > 0 else None for a, b in pairs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=120)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sampling", nargs="+", default=["uniform", "repeat_factor"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/skewed"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds:
        root = generate_synthetic(args.out / f"data{seed}", seed=seed, n_train=args.n_train, n_val=60,
                                  image_size=(96, 160), num_classes=4, max_objects=2, body_radius=(0.26, 0.36),
                                  class_weights=(60, 20, 10, 5), progress=False)
        train = SyntheticDataset(root, "train")
        val = SyntheticDataset(root, "val")
        pseudo_dir = args.out / f"pseudo{seed}"
        pseudo = _pseudo_labels(train, pseudo_dir)
        pseudo_pred = np.array([r["pred_pixels"] for r in pseudo["classes"]], np.float64)
        share = pseudo_pred / pseudo_pred.sum()
        images_per_class = np.stack([train.get_labels(i) for i in range(len(train))]).sum(0).astype(int).tolist()
        results.append({"seed": seed, "what": "pseudo", "images_per_class": images_per_class, **_summary(pseudo)})
        print(json.dumps(results[-1]), flush=True)
        for sampling in args.sampling:
            cfg = SegTrainConfig(
                pseudo_labels=str(pseudo_dir), sampling=sampling,
                model=SegModelConfig(arch="deeplabv3", backbone="resnet18", weights=None, freeze_bn=False,
                                     output_stride=16))
            cfg.data.kind, cfg.data.root, cfg.data.split = "synthetic", str(root), "train"
            cfg.aug.crop_size = 96
            e = cfg.engine
            e.batch_size, e.max_steps, e.num_workers, e.seed = 8, args.steps, 0, seed
            e.progress, e.log_every, e.device = False, 50, "cpu"
            t0 = time.time()
            ckpt = train_seg(cfg, args.out / f"seg{seed}_{sampling}")
            train_s = time.time() - t0
            from sipe.seg.model import load_seg_checkpoint

            model = load_seg_checkpoint(ckpt)[0].eval()
            on_train = _summary(evaluate_seg(model, train, progress=False), share)
            on_val = _summary(evaluate_seg(model, val, progress=False))
            results.append({"seed": seed, "what": sampling, "train_s": round(train_s), "on_train": on_train,
                            "on_val": on_val})
            print(json.dumps(results[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
