"""GPU numbers for the benchmarks README: training steps/s and IS-CAM images/s on one CUDA device.

Usage: python benchmarks/gpu_check.py [--out DIR] [--quick]
(``benchmarks/gpu_check.sh`` runs the GPU parity tests first, then this.)

- training: the SIPE step (forward, both losses, backward, SGD step) at the official batch
  16 x 512x512, ResNet-50, K=21, random weights: fp32 (cuDNN's default TF32 convolutions), fp32
  channels-last, AMP fp16 (+ GradScaler, as ``sipe.engine`` does) and AMP bf16, both channels-last;
  plus the paper's formulas materialised (``bench_train_step.official_forward``) in fp32;
- IS-CAM: ``multiscale_is_cam`` (4 scales + flip) on 500x375 images (K=21) and on 640x480 images
  (K=81), fp32 / fp16 / bf16 autocast on a prepared model (batch norm folded, channels-last),
  and ``sipe.cams.generate.generate_cams`` end to end (DataLoader workers decoding and resizing, files written);
- peak GPU memory (``torch.cuda.max_memory_allocated``) of every row.
Prints markdown tables and writes them with the raw numbers to ``--out`` (results.md, results.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import official_forward, ours_forward  # noqa: E402
from sipe.cams.multiscale import multiscale_is_cam, prepare_for_inference  # noqa: E402
from sipe.core import ipe, losses  # noqa: E402
from sipe.models import build_sipe  # noqa: E402

GiB = 1024**3


def sync_time(fn, n: int, warmup: int) -> float:
    """Seconds per call of ``fn`` (mean of ``n`` after ``warmup``), CUDA-synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def training_rows(device: torch.device, batch: int, size: int, steps: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(batch, 20, generator=g) < 0.15).float()
    labels[:, 0] = 1
    image = torch.randn(batch, 3, size, size, generator=g).to(device)
    mask = ipe.lowres_valid_mask(torch.ones(batch, size, size), labels).to(device)
    labels = labels.to(device)
    configs = [  # name, forward, channels_last, autocast dtype
        ("official (materialised) fp32", official_forward, False, None),
        ("ours fp32", ours_forward, False, None),
        ("ours fp32 channels-last", ours_forward, True, None),
        ("ours AMP fp16 channels-last", ours_forward, True, torch.float16),
        ("ours AMP bf16 channels-last", ours_forward, True, torch.bfloat16),
    ]
    rows = []
    for name, forward, channels_last, dtype in configs:
        torch.manual_seed(0)
        model = build_sipe("resnet50", num_classes=21).to(device).train()
        if forward is official_forward:
            for p in list(model.encoder.layer1.parameters()) + list(model.encoder.layer2.parameters()):
                p.requires_grad_(True)  # the official code freezes only the stem
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        x = image.contiguous(memory_format=fmt)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

        def step(model=model, forward=forward, x=x, opt=opt, scaler=scaler, dtype=dtype):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = forward(model, x, mask)
            loss = losses.classification_loss(out["score"].float(), labels) + losses.gsc_loss(
                out["cam"].float(), out["is_cam"].float()
            )
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        seconds = sync_time(step, steps, warmup=3)
        rows.append({"name": name, "steps_per_s": 1 / seconds, "images_per_s": batch / seconds,
                     "peak_gib": torch.cuda.max_memory_allocated(device) / GiB})
        print(f"  train {name}: {1 / seconds:.2f} steps/s", flush=True)
        del model, opt, step
    return rows


def synthetic_images(n: int, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sipe.data.synthetic import draw_synthetic_image

    out = []
    for i in range(n):
        image, mask, _ = draw_synthetic_image(np.random.default_rng(i), h, w, num_classes=6, max_objects=3)
        out.append((image, mask))
    return out


def iscam_rows(device: torch.device, n_images: int) -> list[dict]:
    rows = []
    for (w, h), k in (((500, 375), 21), ((640, 480), 81)):
        images = synthetic_images(n_images, h, w)
        torch.manual_seed(0)
        model = prepare_for_inference(build_sipe("resnet50", num_classes=k).to(device))
        rng = np.random.default_rng(0)
        labels = [(rng.random(k - 1) < 3 / (k - 1)).astype(np.float32) for _ in images]
        for lab in labels:
            lab[rng.integers(k - 1)] = 1
        for precision, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            def run(model=model, dtype=dtype, images=images, labels=labels):
                for (image, _), lab in zip(images, labels, strict=True):
                    multiscale_is_cam(model, image, lab, autocast_dtype=dtype)

            run()  # warm-up: cuDNN autotuning for these shapes
            torch.cuda.reset_peak_memory_stats(device)
            seconds = sync_time(run, 1, warmup=0)
            rows.append({"name": f"multiscale_is_cam {w}x{h}, K={k}, {precision}", "images_per_s": n_images / seconds,
                         "peak_gib": torch.cuda.max_memory_allocated(device) / GiB})
            print(f"  {rows[-1]['name']}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
        del model
    return rows


def generate_cams_row(device: torch.device, n_images: int, cudnn_benchmark: bool = False) -> dict:
    """``generate_cams`` over images of random sizes. ``cudnn_benchmark`` as sipe runs it (off): with it
    on, every new image size is autotuned anew (the first GPU run measured 0.3 images/s that way)."""
    from sipe.cams.generate import CamConfig, generate_cams
    from sipe.data.synthetic import SyntheticDataset, generate_synthetic

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic(Path(tmp) / "data", seed=0, n_train=n_images, n_val=0, image_size=(375, 500),
                                  num_classes=4, progress=False)
        dataset = SyntheticDataset(root, "train")
        torch.manual_seed(0)
        model = build_sipe("resnet50", num_classes=5).to(device)
        cfg = CamConfig(channels_last=True, precision="fp16", num_workers=4)
        warm = CamConfig(channels_last=True, precision="fp16", num_workers=0)
        generate_cams(model, dataset.subset([0, 1]), Path(tmp) / "warm", warm)
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        summary = generate_cams(model, dataset, Path(tmp) / "out", cfg)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    torch.backends.cudnn.benchmark = previous
    assert summary["written"] == n_images, summary
    row = {"name": f"generate_cams {n_images} synthetic images 375-500 px, fp16, 4 loader workers, npz files, "
                   f"cudnn.benchmark {'on' if cudnn_benchmark else 'off'}",
           "images_per_s": n_images / seconds, "peak_gib": torch.cuda.max_memory_allocated(device) / GiB}
    print(f"  {row['name']}: {row['images_per_s']:.1f} images/s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for results.md and results.json")
    parser.add_argument("--quick", action="store_true", help="fewer steps and images (a smoke run)")
    parser.add_argument("--only-generate", action="store_true",
                        help="only the generate_cams rows, with cudnn.benchmark off and on (a follow-up check)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to this PyTorch; nothing to measure.")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(device)
    header = (f"{props.name}, {props.total_memory / GiB:.0f} GiB, torch {torch.__version__}, "
              f"cuDNN {torch.backends.cudnn.version()}, TF32 convolutions {torch.backends.cudnn.allow_tf32}")
    print(header, flush=True)
    steps, n_img = (3, 4) if args.quick else (10, 20)
    train = [] if args.only_generate else training_rows(device, batch=16, size=512, steps=steps)
    cams = [] if args.only_generate else iscam_rows(device, n_img)
    cams.append(generate_cams_row(device, 2 * n_img))
    if args.only_generate:
        cams.append(generate_cams_row(device, max(4, n_img // 2), cudnn_benchmark=True))

    lines = [f"GPU: {header}"]
    if train:
        lines += ["", "| training step, batch 16 x 512x512, ResNet-50 | steps/s | images/s | peak GPU memory |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['steps_per_s']:.2f} | {r['images_per_s']:.1f} | {r['peak_gib']:.2f} GiB |"
                  for r in train]
    lines += ["", "| IS-CAM generation, 4 scales + flip, ResNet-50 | images/s | peak GPU memory |",
              "| --- | --- | --- |"]
    lines += [f"| {r['name']} | {r['images_per_s']:.1f} | {r['peak_gib']:.2f} GiB |" for r in cams]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from sipe.io import write_text

        write_text(out / "results.md", text + "\n")
        write_text(out / "results.json", json.dumps({"device": header, "train": train, "iscam": cams}, indent=1))


if __name__ == "__main__":
    main()
