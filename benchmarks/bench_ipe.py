"""IPE step (seeds + prototypes + IS-CAM) time and peak extra memory, and one whole multi-scale inference.

Usage: python benchmarks/bench_ipe.py [--threads 2] [--naive]
Each row runs in this process with torch set to ``--threads`` threads. ``--naive`` also times the
official formulation (materialised (N, K, HW, HW) products) where it fits in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _measure import MiB, measure  # noqa: E402
from sipe.cams.multiscale import multiscale_is_cam  # noqa: E402
from sipe.core import ipe  # noqa: E402
from sipe.models import build_sipe  # noqa: E402


def official_ipe(cam, struct, hie, mask):
    """The authors' formulation, materialising (N, K, P, P) and (N, K, C, h, w)."""
    n, k, h, w = cam.shape
    fs = struct.reshape(n, -1, h * w)
    fs = fs / (fs.norm(dim=1, keepdim=True) + 1e-5)
    corr = F.relu(fs.transpose(2, 1) @ fs).unsqueeze(1)
    camf = cam.reshape(n, k, 1, h * w)
    inter = (corr * camf).sum(-1)
    union = corr.sum(-1) + camf.sum(-1) - inter
    miou = (inter / union).view(n, k, h, w)
    miou[:, 0] *= 0.5
    seeds = F.one_hot(miou.argmax(1), k).permute(0, 3, 1, 2).float() * mask
    protos = (seeds.unsqueeze(2) * hie.unsqueeze(1)).mean(dim=(3, 4))
    return F.relu(torch.cosine_similarity(hie.unsqueeze(1), protos[..., None, None], dim=2))


def ours(cam, struct, hie, mask):
    seeds, _ = ipe.structure_seeds(cam, struct, mask)
    return ipe.is_cam(ipe.prototypes(seeds, hie), hie)


def ipe_rows(naive: bool) -> list[str]:
    rows = []
    cases = [("COCO 640x480 @2.0", 81, 60, 80), ("VOC 500x375 @1.0", 21, 24, 32), ("VOC 500x375 @2.0", 21, 47, 63)]
    for label, k, h, w in cases:
        g = torch.Generator().manual_seed(0)
        cam = ipe.normalize_cam(torch.randn(1, k - 1, h, w, generator=g))
        hie = torch.randn(1, 768, h, w, generator=g)
        mask = torch.ones(1, k, 1, 1)
        t, mem = measure(lambda cam=cam, hie=hie, mask=mask: ours(cam, hie, hie, mask))
        line = f"| {label} | {k} | {h}x{w} | {t * 1000:.0f} ms | {mem / MiB:.0f} MiB |"
        need = k * (h * w) ** 2 * 4 * 2
        if naive and need < 12 * 1024**3:
            tn, memn = measure(lambda cam=cam, hie=hie, mask=mask: official_ipe(cam, hie, hie, mask), repeats=2)
            line += f" {tn * 1000:.0f} ms | {memn / MiB:.0f} MiB | {tn / t:.1f}x |"
        else:
            line += " - | - | - |"
        rows.append(line)
    return rows


def inference_row() -> str:
    model = build_sipe("resnet50", num_classes=21).eval()
    image = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    labels = np.zeros(20, dtype=np.float32)
    labels[[2, 14]] = 1
    t, mem = measure(lambda: multiscale_is_cam(model, image, labels), repeats=2)
    return f"| multi-scale IS-CAM, 500x375, 4 scales + flip, ResNet-50 | 21 | - | {t:.2f} s | {mem / MiB:.0f} MiB |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive", action="store_true", help="also time the official materialised formulation")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print("| case | K | grid | ours time | ours extra memory | official time | official extra memory | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with torch.no_grad():
        for row in ipe_rows(args.naive):
            print(row, flush=True)
        if not args.skip_inference:
            print(inference_row(), flush=True)


if __name__ == "__main__":
    main()
