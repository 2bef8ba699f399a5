"""IRN with and without its displacement branch (``irn.displacement``): a training step and the boundary pass
of the pseudo labels.

The displacement branch serves IRN's instance masks; SIPE's pseudo labels read the boundary branch alone,
which comes out the same to the bit either way (``tests/test_refine_irn.py``). This measures what the branch
costs: a training step (forward, both losses, backward) of the official recipe's shape, and the per-image
inference of ``sipe.refine.pseudo.irn_boundary`` (image and its flip) against the full forward.

    python benchmarks/bench_irn.py [--backbone resnet50] [--crop 512] [--batch 4] [--image 512 384] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load_average, measure  # noqa: E402
from sipe.refine.train_irn import build_irn, irn_step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--crop", type=int, default=512, help="training crop (official 512)")
    p.add_argument("--batch", type=int, default=4, help="training images per step (official 32)")
    p.add_argument("--image", type=int, nargs=2, default=(512, 384), metavar=("H", "W"),
                   help="inference image size, padded to a multiple of 16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(args.batch, 3, args.crop, args.crop, generator=g),
             "label": torch.randint(0, 3, (args.batch, args.crop // 4, args.crop // 4), generator=g,
                                    dtype=torch.uint8)}
    h, w = (-(-s // 16) * 16 for s in args.image)
    image = torch.randn(2, 3, h, w, generator=g)
    print(f"{args.backbone}, training crop {args.crop} x {args.batch}, inference {h}x{w} (+ flip), "
          f"{args.threads} threads; load {load_average()}")
    rows = {}
    for displacement in (True, False):
        torch.manual_seed(0)
        model = build_irn(args.backbone, displacement=displacement)

        def train_step(model=model) -> None:
            model.train()
            model.zero_grad(set_to_none=True)
            irn_step(model, batch, radius=10)["loss"].backward()

        @torch.no_grad()
        def infer(model=model, displacement=displacement) -> None:
            model.eval()
            model(image) if displacement else model.boundary(image)

        rows[displacement] = (measure(train_step, args.repeats)[0], measure(infer, args.repeats)[0])
        name = "with displacement (official)" if displacement else "boundary branch only"
        print(f"{name:30s} train step {rows[displacement][0]:.3f} s   pseudo-label pass {rows[displacement][1]:.3f} s")
    full, lean = rows[True], rows[False]
    print(f"ratio (official / boundary only): training {full[0] / lean[0]:.2f}x, pseudo-label pass "
          f"{full[1] / lean[1]:.2f}x")


if __name__ == "__main__":
    main()
