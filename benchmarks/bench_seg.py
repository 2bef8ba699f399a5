"""DeepLabV2-ResNet-101 (the WSSS papers' network) against sipe's DeepLabV3-ResNet-101, on CPU.

Usage: python benchmarks/bench_seg.py [--threads 2] [--batch 2] [--crop 321] [--scales 0.5 0.75 1.0]
       [--v3-stride 16]

Two measurements per network, random weights (the speed does not depend on them), 21 classes:
- one training step: forward, loss, backward and SGD step on a batch of ``--batch`` crops of
  ``--crop`` px (DeepLabV2: MSC at 1.0 / 0.75 / 0.5 and the four-term loss, frozen BN as the
  recipe; DeepLabV3: one scale, cross-entropy, trainable BN as its default config);
- one multi-scale + flip inference of a 500x375 image (:func:`sipe.seg.predict.predict_probs`
  over ``--scales``; each DeepLabV2 pass is itself MSC-fused, as deeplab-pytorch tests).
Each is timed once after a small warm-up; prints the times and the V2 / V3 ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load_average  # noqa: E402
from sipe.models.layers import freeze_batchnorm  # noqa: E402
from sipe.seg.deeplabv2 import build_deeplabv2, param_groups  # noqa: E402
from sipe.seg.deeplabv3 import build_deeplab  # noqa: E402
from sipe.seg.losses import make_msc_step_fn  # noqa: E402
from sipe.seg.predict import predict_probs  # noqa: E402
from sipe.seg.train import make_step_fn  # noqa: E402
from sipe.seg.train import param_groups as v3_param_groups  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    avx = sorted(f for f in flags if f.startswith("avx") or f == "amx_bf16")
    return f"{name}; {' '.join(avx) or 'no avx flags'}"


def train_step_time(model: torch.nn.Module, step_fn, groups, batch: dict[str, torch.Tensor]) -> float:
    opt = torch.optim.SGD([{"params": g["params"], "lr": 1e-4 * g["lr_mult"]} for g in groups], lr=1e-4, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    out = step_fn(model, batch)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=321)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    ap.add_argument("--v3-stride", type=int, default=16, help="DeepLabV3 output stride (sipe's default 16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; {args.threads} threads; torch {torch.__version__}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average {load_average()}")

    torch.manual_seed(0)
    v2 = build_deeplabv2(21, "resnet101")
    freeze_batchnorm(v2.backbone)
    v3 = build_deeplab(21, "resnet101", output_stride=args.v3_stride)
    nets = {
        "DeepLabV2-R101 (OS 8, MSC 1/0.75/0.5)": (v2, make_msc_step_fn(), param_groups(v2, 10.0, 20.0, 0.0)),
        f"DeepLabV3-R101 (OS {args.v3_stride})": (v3, make_step_fn(), v3_param_groups(v3, 10.0)),
    }
    rng = np.random.default_rng(0)
    batch = {
        "image": torch.randn(args.batch, 3, args.crop, args.crop),
        "label": torch.from_numpy(rng.integers(0, 21, (args.batch, args.crop, args.crop))).long(),
    }
    small = {"image": batch["image"][:2, :, :65, :65], "label": batch["label"][:2, :65, :65]}
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    results: dict[str, tuple[float, float]] = {}
    for name, (model, step_fn, groups) in nets.items():
        train_step_time(model, step_fn, groups, small)  # warm-up (allocator, oneDNN primitives)
        t_train = train_step_time(model, step_fn, groups, batch)
        model.eval()
        predict_probs(model, image[:96, :128], scales=(1.0,), flip=False)
        t0 = time.perf_counter()
        probs = predict_probs(model, image, scales=args.scales, flip=True)
        t_inf = time.perf_counter() - t0
        assert probs.shape == (21, 375, 500)
        results[name] = (t_train, t_inf)
        print(f"{name}: train step (batch {args.batch} x {args.crop}^2) {t_train:.2f} s; "
              f"inference 500x375, scales {args.scales} + flip {t_inf:.2f} s", flush=True)
    (tr2, in2), (tr3, in3) = results.values()
    print(f"ratio V2 / V3: train step {tr2 / tr3:.2f}x, inference {in2 / in3:.2f}x; load average {load_average()}")


if __name__ == "__main__":
    main()
