"""A one-class inspection set with half negatives, through the commands a user runs (issue 20).

Usage: python benchmarks/bench_negatives.py [--seeds 0 1 2] [--epochs 20] [--n-train 64]
       [--out /tmp/bench_negatives] [--skip-unlabeled]

Per seed: a "defect" set drawn by the synthetic generator (``tests/helpers.write_binary_set``:
every odd image a negative with an empty labels cell), ``--n-train`` training and 16 held-out images of 96 px;
``sipe train`` with default settings (ResNet-18 from scratch, ``--epochs``), ``sipe cam`` and
``sipe eval --kind is_cam`` on both splits, and ``sipe predict`` on the held-out images without
labels (presence from the classifier). Prints a Markdown table: IS-CAM mIoU on the training and
held-out images, the false-positive pixel rate and the count of negatives with any foreground, and
how many held-out positives / negatives ``sipe predict`` marks with defect pixels and the share of the
negatives' pixels it marks (the false positives a user without tags gets; IS-CAM evaluation with the
labels file's tags gives negatives an all-background map by construction).
``--skip-unlabeled`` adds ``data.skip_unlabeled=true`` (the old default, which drops negatives).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _measure import load_average  # noqa: E402
from bench_seg import cpu_model  # noqa: E402
from helpers import write_binary_set  # noqa: E402
from sipe.cli import main  # noqa: E402

SIZE = (96, 96)


def _ok(argv: list[str]) -> None:
    if main(argv) != 0:
        raise SystemExit(f"failed: sipe {' '.join(argv)}")


def _eval(root: Path, csv: Path, cams: Path, out: Path) -> dict:
    _ok(["eval", "--dataset", "custom", "--root", str(root), "--split", str(csv), "--mask-dir", str(root / "masks"),
         "--pred", str(cams / "is_cam"), "--kind", "is_cam", "--out", str(out)])
    return json.loads(out.read_text())


def run_seed(seed: int, epochs: int, n_train: int, out: Path, skip_unlabeled: bool) -> dict:
    """Train, IS-CAM, evaluate and predict for one seed; returns the numbers of one table row."""
    train_root, val_root = out / "train_data", out / "val_data"
    train_csv = write_binary_set(train_root, n=n_train, size=SIZE, seed=1000 + seed)
    val_csv = write_binary_set(val_root, n=16, size=SIZE, seed=2000 + seed)
    run = out / "sipe"
    _ok(["train", "--out", str(run), "data.kind=custom", f"data.root={train_root}", f"data.split={train_csv}",
         "data.val_split=null", "model.backbone=resnet18", "model.weights=null", "aug.resize_long=[96,128]",
         "aug.crop_size=96", f"engine.epochs={epochs}", "engine.batch_size=8", f"engine.seed={seed}",
         "engine.num_workers=0", "engine.progress=false", *(["data.skip_unlabeled=true"] if skip_unlabeled else [])])
    ckpt = run / "checkpoints" / "final.pt"
    reports = {}
    for name, root, csv in (("train", train_root, train_csv), ("val", val_root, val_csv)):
        cams = out / f"cams_{name}"
        _ok(["cam", "--checkpoint", str(ckpt), "--dataset", "custom", "--root", str(root), "--split", str(csv),
             "--out", str(cams), "--workers", "0"])
        reports[name] = _eval(root, csv, cams, out / f"eval_{name}.json")
    pred = out / "predict_val"
    _ok(["predict", str(val_root), "--checkpoint", str(ckpt), "--out", str(pred), "--no-overlay"])
    masks = {i: np.asarray(Image.open(pred / f"im{i}.png")) for i in range(16)}
    marked = {i: bool(m.any()) for i, m in masks.items()}
    neg_pixels = np.concatenate([masks[i].ravel() for i in range(1, 16, 2)])
    neg = reports["val"]["negatives"]
    return {"seed": seed, "train": reports["train"]["miou"], "val": reports["val"]["miou"],
            "fp_rate": neg["fp_pixel_rate"], "neg_with_fp": f"{neg['images_with_fp']}/{neg['images']}",
            "pos_marked": sum(marked[i] for i in range(0, 16, 2)),
            "neg_marked": sum(marked[i] for i in range(1, 16, 2)), "predict_fp": float((neg_pixels > 0).mean())}


def main_(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_negatives"))
    p.add_argument("--skip-unlabeled", action="store_true")
    args = p.parse_args(argv)
    rows = [run_seed(s, args.epochs, args.n_train, args.out / f"seed{s}", args.skip_unlabeled) for s in args.seeds]
    print(f"\n{cpu_model()}; load average {load_average()}; skip_unlabeled={args.skip_unlabeled}; "
          f"{args.n_train} training images, {args.epochs} epochs\n")
    print("| seed | train IS-CAM mIoU | held-out IS-CAM mIoU | FP pixels on negatives | negatives with any FP "
          "| `sipe predict`, no labels: positives / negatives marked | its FP pixels on negatives |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {100 * r['train']:.1f} | {100 * r['val']:.1f} | {100 * r['fp_rate']:.2f} % "
              f"| {r['neg_with_fp']} | {r['pos_marked']}/8, {r['neg_marked']}/8 | {100 * r['predict_fp']:.1f} % |")


if __name__ == "__main__":
    main_()
