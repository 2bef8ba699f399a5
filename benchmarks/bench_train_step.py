"""One SIPE training step (forward, both losses, backward): ours against the paper's formulas materialised.

Usage: python benchmarks/bench_train_step.py [--threads 2] [--batch 4] [--size 320] [--classes 21] [--repeats 3]

Rows (ResNet-50, random weights, official strides and frozen parts):
- ``official (materialised) fp32``: the authors' forward written out: the frozen stages 1-2 run
  with autograd recording (their parameters require grad, only the stage-2 output is detached),
  the structure IoU through an (N, K, HW, HW) product with autograd recording, prototypes through
  an (N, K, C, h, w) product and IS-CAM through a broadcast (N, K, C, h, w) cosine similarity;
- ``ours fp32``: ``SIPENet.forward`` (frozen stages under no_grad, IPE as matrix products);
- ``ours fp32 channels-last``;
- ``ours bf16 autocast + channels-last`` (CPU autocast; IPE stays float32).

Every row computes the same losses (checked before timing). Timings are interleaved round by
round so that load from other processes hits every row alike; the table gives min and median.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _measure import MiB, load_average, peak_rss, reset_peak_rss  # noqa: E402
from sipe.cams.multiscale import release_memory  # noqa: E402
from sipe.core import ipe, losses  # noqa: E402
from sipe.models import SIPENet, build_sipe  # noqa: E402


def official_forward(model: SIPENet, x: torch.Tensor, valid_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The paper's training forward with every intermediate materialised, as the authors' code runs it."""
    e = model.encoder
    x0 = e.maxpool(e.relu(e.bn1(e.conv1(x))))
    x1 = e.layer1(x0)
    x2 = e.layer2(x1).detach()
    x3 = e.layer3(x2)
    x4 = e.layer4(x3)
    size = x3.shape[2:]
    sides = [conv(t.detach()) for conv, t in zip((model.side1, model.side2, model.side3, model.side4),
                                                 (x1, x2, x3, x4), strict=True)]
    hie = torch.cat([F.interpolate(s / (s.norm(dim=1, keepdim=True) + 1e-5), size, mode="bilinear")
                     for s in sides], dim=1)
    raw = model.classifier(x4)
    score = F.adaptive_avg_pool2d(raw, 1)
    cam = F.relu(raw)
    cam = cam / (F.adaptive_max_pool2d(cam, 1) + 1e-5)
    cam = torch.cat([1 - cam.max(dim=1, keepdim=True)[0], cam], dim=1)
    cam = F.interpolate(cam, size, mode="bilinear", align_corners=True) * valid_mask
    n, k, h, w = cam.shape
    # Seeds: (N, 1, P, P) correlation times (N, K, 1, P) CAM -> (N, K, P, P), all recorded by autograd.
    fs = x4.clone().reshape(n, -1, h * w)
    fs = fs / (fs.norm(dim=1, keepdim=True) + 1e-5)
    corr = F.relu(fs.transpose(2, 1) @ fs).unsqueeze(1)
    cam_flat = cam.clone().reshape(n, k, 1, h * w)
    inter = (corr * cam_flat).sum(-1)
    union = corr.sum(-1) + cam_flat.sum(-1) - inter
    miou = (inter / union).reshape(n, k, h, w)
    miou = torch.cat([miou[:, :1] * 0.5, miou[:, 1:]], dim=1)
    probs = F.softmax(miou, dim=1)
    seeds = F.one_hot(miou.argmax(1), k).permute(0, 3, 1, 2).float() * valid_mask
    # Prototypes: (N, K, 1, h, w) x (N, 1, C, h, w) -> (N, K, C, h, w), then the spatial mean.
    crop = seeds.unsqueeze(2) * hie.unsqueeze(1)
    protos = F.adaptive_avg_pool2d(crop.reshape(-1, hie.shape[1], h, w), 1).reshape(n, k, -1, 1, 1)
    is_cam = F.relu(torch.cosine_similarity(hie.unsqueeze(1), protos, dim=2))
    is_cam = F.interpolate(is_cam, (h, w), mode="bilinear", align_corners=True)
    return {"score": score, "cam": cam, "seeds": seeds, "is_cam": is_cam, "probs": probs}


def ours_forward(model: SIPENet, x: torch.Tensor, valid_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return model(x, valid_mask)


Forward = Callable[[SIPENet, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def step(model: SIPENet, forward: Forward, batch: dict[str, torch.Tensor], amp: bool) -> torch.Tensor:
    """zero_grad, forward (under bf16 autocast when ``amp``), both losses in float32, backward."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        out = forward(model, batch["image"], batch["mask"])
    loss = losses.classification_loss(out["score"].float(), batch["labels"]) + losses.gsc_loss(
        out["cam"].float(), out["is_cam"].float()
    )
    loss.backward()
    return loss.detach()


def make_batch(n: int, size: int, num_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, num_classes - 1, generator=g) < 0.15).float()
    labels[:, 0] = 1  # at least one class per image
    valid = torch.ones(n, size, size)
    valid[0, :, size * 3 // 4:] = 0  # a padded crop, as the training transform makes
    return {
        "image": torch.randn(n, 3, size, size, generator=g),
        "labels": labels,
        "mask": ipe.lowres_valid_mask(valid, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} x {args.size}x{args.size}, "
          f"K={args.classes}, ResNet-50; load average at start {load_average()}")

    torch.manual_seed(0)
    base = build_sipe("resnet50", num_classes=args.classes).train()
    official = copy.deepcopy(base)
    for p in list(official.encoder.layer1.parameters()) + list(official.encoder.layer2.parameters()):
        p.requires_grad_(True)  # the official code freezes only the stem's parameters
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    batch = make_batch(args.batch, args.size, args.classes)
    batch_cl = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
    rows = {
        "official (materialised) fp32": (official, official_forward, batch, False),
        "ours fp32": (base, ours_forward, batch, False),
        "ours fp32 channels-last": (cl, ours_forward, batch_cl, False),
        "ours bf16 autocast + channels-last": (cl, ours_forward, batch_cl, True),
    }

    # Same step: the fp32 rows give the same losses and classifier gradients.
    ref_loss = step(official, official_forward, batch, False)
    ref_grad = official.classifier.weight.grad.clone()
    for name in ("ours fp32", "ours fp32 channels-last"):
        model, fwd, b, amp = rows[name]
        loss = step(model, fwd, b, amp)
        grad = model.classifier.weight.grad
        if abs(loss.item() - ref_loss.item()) > 1e-4 or not torch.allclose(grad, ref_grad, atol=1e-4, rtol=1e-3):
            raise SystemExit(f"{name}: loss {loss.item()} / grad differ from the official step ({ref_loss.item()})")
    low = step(cl, ours_forward, batch_cl, True)
    print(f"losses: fp32 {ref_loss.item():.5f}, bf16 autocast {low.item():.5f}")

    memory = {}
    for name, (model, fwd, b, amp) in rows.items():
        step(model, fwd, b, amp)  # warm-up
        model.zero_grad(set_to_none=True)
        release_memory()  # freed heap blocks back to the OS, so that the peak counts this step's memory
        before = reset_peak_rss()
        step(model, fwd, b, amp)
        memory[name] = peak_rss() - before
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (model, fwd, b, amp) in rows.items():
            t0 = time.perf_counter()
            step(model, fwd, b, amp)
            times[name].append(time.perf_counter() - t0)

    best = {name: min(t) for name, t in times.items()}
    official_t, fp32_t = best["official (materialised) fp32"], best["ours fp32"]
    print()
    print("| step | time min | time median | vs official | vs ours fp32 | peak extra memory (activations + grads) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {best[name]:.2f} s | {statistics.median(t):.2f} s | {official_t / best[name]:.2f}x | "
              f"{fp32_t / best[name]:.2f}x | {memory[name] / MiB:.0f} MiB |")
    cl_t, bf_t = best["ours fp32 channels-last"], best["ours bf16 autocast + channels-last"]
    print(f"\nbf16 autocast + channels-last vs fp32 channels-last: {cl_t / bf_t:.2f}x")
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
