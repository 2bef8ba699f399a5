"""``sipe.Predictor`` from a notebook-like script against ``sipe predict``, on the same SIPE checkpoint and images.

Usage: python benchmarks/bench_predictor.py [--images 6] [--size 320x240] [--backbone resnet18] [--repeats 2]

Each row is a fresh Python process, start-up included (torch's import, reading the checkpoint): ``sipe
predict`` on the image files, and a script that imports ``sipe.Predictor`` (torch not imported before it, as
in a fresh notebook) and calls ``Predictor.from_checkpoint(...).predict(paths)``. Random weights (the speed
does not depend on them); the classifier decides the classes. The masks of both are compared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys, numpy as np
from PIL import Image
from sipe import Predictor
paths = sys.argv[3:]
outs = Predictor.from_checkpoint(sys.argv[1], device="cpu").predict(paths)
for p, o in zip(paths, outs):
    np.save(f"{sys.argv[2]}/{p.rsplit('/', 1)[-1]}.npy", o.mask)
"""


def _setup(work: Path, n: int, size: tuple[int, int], backbone: str) -> tuple[Path, list[Path]]:
    import torch
    from PIL import Image

    from sipe import io as sio
    from sipe.models import build_sipe

    torch.manual_seed(0)
    model = build_sipe(backbone, num_classes=3, weights=None)
    ckpt = work / "sipe.pt"
    sio.save_torch({"model": model.state_dict(), "meta": {"class_names": ["background", "a", "b"]}}, ckpt)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = work / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return ckpt, paths


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_WAIT_POLICY", None)  # each side sets its own, as a user's shell would not
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, paths = _setup(work, args.images, (w, h), args.backbone)
        (work / "cli").mkdir()
        (work / "api").mkdir()
        cli = [sys.executable, "-m", "sipe", "predict", "--checkpoint", str(ckpt), "--out", str(work / "cli"),
               "--no-overlay", "--device", "cpu", *map(str, paths)]
        api = [sys.executable, "-c", SCRIPT, str(ckpt), str(work / "api"), *map(str, paths)]
        times: dict[str, list[float]] = {"sipe predict": [], "Predictor.predict": []}
        for _ in range(args.repeats):  # interleaved: load from other processes hits both alike
            times["sipe predict"].append(_timed(cli))
            times["Predictor.predict"].append(_timed(api))
        from PIL import Image

        same = all(np.array_equal(np.asarray(Image.open(work / "cli" / f"{p.stem}.png")),
                                  np.load(work / "api" / f"{p.name}.npy")) for p in paths)
    print(f"{args.images} images {args.size}, {args.backbone}, random weights; seconds per process "
          f"(start-up included), min of {args.repeats}:")
    for name, ts in times.items():
        print(f"  {name:<18} {min(ts):6.1f}")
    print(f"identical masks: {same}")


if __name__ == "__main__":
    main()
