"""Multi-scale IS-CAM inference of one image: plain fp32 against the fast paths.

Usage: python benchmarks/bench_inference.py [--threads 2] [--size 640x480] [--classes 81] [--repeats 2]
       [--paths "plain fp32,fp32 channels-last,fp32 fast,bf16 fast"]

Rows (all ResNet-50, 4 scales + flip, the official ``make_cam`` semantics):
- ``plain fp32``: the model as built, default memory format (the reference);
- ``fp32 channels-last``: weights and inputs channels-last (not run by default; a breakdown row);
- ``fp32 fast``: :func:`sipe.cams.multiscale.prepare_for_inference` (channels-last, batch norm folded,
  convolution + ReLU (+ residual) fused into one oneDNN call on CPU);
- ``bf16 fast``: the same under bf16 autocast (the trunk; IPE float32).

Timings use a random-weights model (the speed does not depend on the weights) and are interleaved
round by round, so that load from other processes hits every row alike; the table gives the
minimum and the median. Peak memory is the peak resident size (VmHWM) of a fresh child process
that builds only that row's model and runs one image: ``total`` is the whole process (torch's
import alone is ~0.7 GiB with the CUDA build of torch), ``extra`` what the inference adds to the
process with the model loaded.

Outputs are compared on a model whose maps are not degenerate (see :func:`probe_model`): max
absolute difference from the plain fp32 maps, and the per-pixel argmax agreement (over the kept
classes, as a segmentation would take it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _measure import MiB, load_average, peak_rss, reset_peak_rss  # noqa: E402
from sipe.cams.multiscale import (  # noqa: E402
    multiscale_is_cam,
    prepare_for_inference,
    release_memory,
    scale_batch,
    to_tensor,
)
from sipe.core import ipe  # noqa: E402
from sipe.data.synthetic import draw_synthetic_image  # noqa: E402
from sipe.models import SIPENet, build_sipe  # noqa: E402
from sipe.models.layers import FrozenBatchNorm2d  # noqa: E402

PATHS = {  # name -> (channels_last, fold_bn, autocast dtype)
    "plain fp32": (False, False, None),
    "fp32 channels-last": (True, False, None),
    "fp32 fast": (True, True, None),
    "bf16 fast": (True, True, torch.bfloat16),
}


def make_path_model(model: SIPENet, name: str) -> SIPENet:
    channels_last, fold, _ = PATHS[name]
    if name == "plain fp32":
        return model
    return prepare_for_inference(model, channels_last=channels_last, fold_bn=fold)


def run_path(model: SIPENet, name: str, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _, maps = multiscale_is_cam(model, image, labels, autocast_dtype=PATHS[name][2])
    return maps


def test_image(size: tuple[int, int], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic scene (objects on a textured background) of ``size`` = (W, H) and its class mask."""
    w, h = size
    image, mask, _ = draw_synthetic_image(np.random.default_rng(seed), h, w, num_classes=6, max_objects=3)
    return image, mask


@torch.no_grad()
def probe_model(num_classes: int, size: tuple[int, int]) -> tuple[SIPENet, np.ndarray, np.ndarray]:
    """A ResNet-50 SIPE model whose IS-CAMs are not degenerate, its test image and labels.

    With random weights every pixel's features are nearly parallel (cosine ~0.8 everywhere), so no
    class ever wins a seed and every IS-CAM is zero: useless for comparing precisions. Without
    trained weights (offline machine), this builds the next best thing from random weights
    (seeded): batch-norm statistics calibrated on eight synthetic images (data-dependent init);
    side convs = the principal directions of each stage's features, orthogonal to their mean (so
    pixels differ in the hierarchical features); classifier rows = difference of mean last-stage
    features inside/outside each synthetic class's masks, and for the remaining classes the
    centred feature of one random position (small, sparse maps as a trained model's absent classes
    have). The labels are the three foreground classes whose structure IoU wins the most positions
    at scale 1.0, so several classes compete for seeds.
    """
    torch.manual_seed(0)
    model = build_sipe("resnet50", num_classes=num_classes).eval()
    w, h = size
    scenes = [draw_synthetic_image(np.random.default_rng(s), h // 2, w // 2, num_classes=6, max_objects=3)
              for s in range(10, 18)]
    x = torch.stack([to_tensor(s[0]) for s in scenes])

    def calibrate(bn: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        bn.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        bn.running_var.copy_(inputs[0].var((0, 2, 3)))

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    stages = model.encoder(x)
    for hook in hooks:
        hook.remove()
    stages = model.encoder(x)
    for conv, t in zip((model.side1, model.side2, model.side3, model.side4), stages, strict=True):
        flat = t.transpose(0, 1).reshape(t.shape[1], -1)
        mean = flat.mean(1)
        centred = flat - mean[:, None]
        u = torch.linalg.eigh(centred @ centred.T).eigenvectors.flip(1)[:, : conv.out_channels].T
        mean = mean / mean.norm()
        conv.weight.copy_((u - (u @ mean)[:, None] * mean)[:, :, None, None])
    last = stages[3]
    c, hh, ww = last.shape[1:]
    masks = torch.from_numpy(np.stack([s[1] for s in scenes])).float()[:, None]
    masks = F.interpolate(masks, (hh, ww), mode="nearest")[:, 0].long().reshape(-1)
    feats = last.transpose(0, 1).reshape(c, -1)
    g = torch.Generator().manual_seed(0)
    rows = (feats[:, torch.randint(0, feats.shape[1], (num_classes - 1,), generator=g)]
            - feats.mean(1, keepdim=True)).T.contiguous()
    for k in range(1, 7):
        if (masks == k).any() and k < num_classes:
            rows[k - 1] = feats[:, masks == k].mean(1) - feats[:, masks != k].mean(1)
    model.classifier.weight.copy_((rows / rows.norm(dim=1, keepdim=True))[:, :, None, None])

    image, _ = test_image(size)
    f = model.features(scale_batch(image, 1.0))
    raw, hie = f.raw_cam[:1] + f.raw_cam[1:].flip(-1), f.hie[:1] + f.hie[1:].flip(-1)
    _, iou = ipe.structure_seeds(ipe.normalize_cam(raw), hie, torch.ones(1, num_classes, 1, 1))
    wins = torch.bincount(iou.argmax(1).flatten(), minlength=num_classes)[1:]
    top = wins.topk(3).indices
    labels = np.zeros(num_classes - 1, dtype=np.float32)
    labels[top[wins[top] > 0].numpy()] = 1
    return model, image, labels


def compare(size: tuple[int, int], num_classes: int, names: list[str]) -> list[str]:
    model, image, labels = probe_model(num_classes, size)
    ref = run_path(model, "plain fp32", image, labels)
    share = np.bincount(ref.argmax(0).ravel(), minlength=len(ref)) / ref[0].size
    rows = [f"probe model: {int(labels.sum())} labelled classes; argmax pixel share of the kept maps "
            f"(background first): {np.round(share, 3).tolist()}"]
    for name in [n for n in names if n != "plain fp32"]:
        out = run_path(make_path_model(model, name), name, image, labels)
        agree = float((out.argmax(0) == ref.argmax(0)).mean())
        rows.append(f"| {name} | {np.abs(out - ref).max():.2e} | {100 * agree:.2f}% |")
    return rows


@torch.no_grad()
def conv_probe() -> str:
    """One ResNet 3x3 convolution (256 -> 256 channels, 2 x 120 x 160, channels-last) per precision:
    shows whether this CPU's low-precision kernels are faster than float32 at all."""
    x = torch.randn(2, 256, 120, 160).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last).eval()
    gflop = 2 * 256 * 256 * 9 * 120 * 160 * 2 / 1e9
    cells = []
    for label, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16), ("fp16 autocast", torch.float16)):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            conv(x)
            best = min(_timed(lambda: conv(x)) for _ in range(5))
        cells.append(f"{label} {best * 1000:.0f} ms ({gflop / best:.0f} GFLOP/s)")
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    isa = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile") if f in flags]
    return "one 3x3 conv 256->256 on 2x120x160: " + ", ".join(cells) + f"; CPU flags: {' '.join(isa)}"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def child(name: str, size: tuple[int, int], num_classes: int) -> None:
    """Memory of one path in a fresh process: only its model is alive."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    model = make_path_model(build_sipe("resnet50", num_classes=num_classes).eval(), name)
    image, _ = test_image(size)
    labels = np.zeros(num_classes - 1, dtype=np.float32)
    labels[[0, 2, 5]] = 1
    release_memory()
    loaded = reset_peak_rss()
    run_path(model, name, image, labels)
    peak = peak_rss()
    release_memory()
    print(json.dumps({"loaded": loaded, "peak": peak, "after": reset_peak_rss()}))


def memory_row(name: str, size: tuple[int, int], num_classes: int, threads: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--size", f"{size[0]}x{size[1]}", "--classes", str(num_classes)],
        capture_output=True, text=True, check=True, env={**os.environ, "BENCH_THREADS": str(threads)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default="640x480", help="W x H of the test image")
    parser.add_argument("--classes", type=int, default=81, help="K, background included")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (each runs every path once)")
    parser.add_argument("--paths", default="plain fp32,fp32 fast,bf16 fast",
                        help=f"comma-separated rows, from: {', '.join(PATHS)}")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        child(args.child, size, args.classes)
        return
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.paths.split(",")]
    unknown = set(names) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown paths {sorted(unknown)}; choose from {list(PATHS)}")
    print(f"torch {torch.__version__}, {args.threads} threads, image {size[0]}x{size[1]}, K={args.classes}, "
          f"4 scales + flip, ResNet-50; load average at start {load_average()}")

    torch.manual_seed(0)
    base = build_sipe("resnet50", num_classes=args.classes).eval()
    models = {n: make_path_model(base, n) for n in names}
    image, _ = test_image(size)
    labels = np.zeros(args.classes - 1, dtype=np.float32)
    labels[[0, 2, 5]] = 1
    for n in names:  # warm-up: oneDNN primitive creation, allocator
        run_path(models[n], n, image, labels)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            t0 = time.perf_counter()
            run_path(models[n], n, image, labels)
            times[n].append(time.perf_counter() - t0)
            release_memory()
    del models, base

    ref = min(times[names[0]])
    print()
    print("| path | time min | time median | speed-up (min) vs first row | peak RSS total | peak extra |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in names:
        mem = "- | -"
        if not args.skip_memory:
            m = memory_row(n, size, args.classes, args.threads)
            mem = f"{m['peak'] / MiB:.0f} MiB | {(m['peak'] - m['loaded']) / MiB:.0f} MiB"
        t = times[n]
        print(f"| {n} | {min(t):.2f} s | {statistics.median(t):.2f} s | {ref / min(t):.2f}x | {mem} |", flush=True)
    print(f"\nload average after timing: {load_average()}")
    if not args.skip_compare:
        rows = compare(size, args.classes, names)
        print("\n" + rows[0] + "\n")
        print("| path | max abs diff vs plain fp32 | argmax agreement vs plain fp32 |")
        print("| --- | --- | --- |")
        for r in rows[1:]:
            print(r, flush=True)
    print("\n" + conv_probe())
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
