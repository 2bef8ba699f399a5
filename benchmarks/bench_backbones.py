"""One SIPE training step and one multi-scale IS-CAM per registry backbone, at the same input.

Usage: OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python benchmarks/bench_backbones.py [--threads 2] [--repeats 2]
       [--backbones resnet50 timm:resnet50 timm:convnext_tiny]

Random weights, 21 classes, CPU, official policy (stages 1-2 frozen, batch-norm statistics frozen).
Training step: forward, both losses, backward on a batch of 2 x 320x320. IS-CAM:
``sipe.cams.multiscale.multiscale_is_cam`` on one 320x240 image at scales 1.0/0.5/1.5/2.0 + flip
(the model from ``prepare_for_inference``: the ResNet gets its folded batch norm, timm models run as
they are), 3 labelled classes. Each time is the minimum over ``--repeats`` runs after one warm-up;
the ratios are to ``resnet50`` (the first backbone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load_average  # noqa: E402
from sipe.cams.multiscale import multiscale_is_cam, prepare_for_inference  # noqa: E402
from sipe.models import build_sipe  # noqa: E402
from sipe.train import sipe_step  # noqa: E402


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels for each new shape
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "timm:resnet50", "timm:convnext_tiny"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    labels = torch.zeros(2, 20)
    labels[:, [2, 7, 14]] = 1
    batch = {"image": torch.randn(2, 3, 320, 320), "valid": torch.ones(2, 320, 320), "labels": labels}
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    rows = []
    for name in args.backbones:
        torch.manual_seed(0)
        model = build_sipe(name, 21, weights=None).train()

        def step(model=model) -> None:
            model.zero_grad(set_to_none=True)
            sipe_step(model, batch)["loss"].backward()

        t_step = best_time(step, args.repeats)
        infer = prepare_for_inference(model)
        t_cam = best_time(lambda infer=infer: multiscale_is_cam(infer, image, labels[0].numpy()), args.repeats)
        rows.append((name, t_step, t_cam))
        print(f"{name}: step {t_step:.2f} s, IS-CAM {t_cam:.2f} s", flush=True)
    base_step, base_cam = rows[0][1], rows[0][2]
    print(f"\nthreads {args.threads}, torch {torch.__version__}, load {load_average()}")
    print("| backbone | training step, 2 x 320x320 | ratio | IS-CAM 320x240, 4 scales + flip | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name, t_step, t_cam in rows:
        print(f"| `{name}` | {t_step:.2f} s | {t_step / base_step:.2f}x | {t_cam:.2f} s | {t_cam / base_cam:.2f}x |")


if __name__ == "__main__":
    main()
