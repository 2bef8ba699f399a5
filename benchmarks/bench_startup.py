"""Start-up time of the ``sipe`` command: help, errors found before real work, first real work.

Each row is the wall time of a fresh ``python -m sipe ...`` subprocess (median of ``--runs``),
with the load average printed, because torch's import dominates and slows with the machine's load.
Run: ``.venv/bin/python benchmarks/bench_startup.py [--runs 3]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _wall(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, cwd=REPO, check=False)
    return time.perf_counter() - t0, done.returncode


def _predict_inputs(tmp: Path) -> tuple[Path, Path]:
    """A 64x64 photo and a randomly initialised ResNet-18 DeepLabV3 checkpoint ('sipe seg train' layout)."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(REPO / "src"))
    from sipe.io import save_torch
    from sipe.seg.architectures import build_from_spec
    from sipe.seg.spec import SegModelSpec

    photo = tmp / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    torch.manual_seed(0)
    spec = SegModelSpec(num_classes=3, backbone="resnet18", output_stride=16, class_names=["background", "a", "b"])
    ckpt = tmp / "seg.pt"
    save_torch({"model": build_from_spec(spec).state_dict(), "meta": {"model_spec": spec.to_dict()}}, ckpt)
    return photo, ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    tmp = Path(tempfile.mkdtemp())
    cfg = str(REPO / "configs" / "photos.yaml")
    photo, ckpt = _predict_inputs(tmp)
    rows = [
        ("`sipe --help`", ["-m", "sipe", "--help"]),
        ("`sipe cam --help`", ["-m", "sipe", "cam", "--help"]),
        ("`sipe cam --scales 1,2` (usage error)", ["-m", "sipe", "cam", "--checkpoint", "c", "--root", "r", "--out",
                                                   "o", "--scales", "1,2"]),
        ("`sipe train model.backbone=resnet19` (config error)",
         ["-m", "sipe", "train", "--config", cfg, "--out", str(tmp / "r"), "model.backbone=resnet19"]),
        ("`sipe train` labels file typo (input error)",
         ["-m", "sipe", "train", "--config", cfg, "--out", str(tmp / "r"), "data.split=nope.csv"]),
        ("`sipe cam` checkpoint typo (input error)",
         ["-m", "sipe", "cam", "--checkpoint", str(tmp / "nope.pt"), "--dataset", "synthetic", "--root",
          str(tmp), "--out", str(tmp / "o")]),
        ("`import torch` alone (first real work needs it)", ["-c", "import torch"]),
        ("`sipe predict` one 64x64 photo, ResNet-18 DeepLabV3 checkpoint (start to mask written)",
         ["-m", "sipe", "predict", str(photo), "--checkpoint", str(ckpt), "--out", str(tmp / "pred"), "--no-overlay",
          "--device", "cpu"]),
    ]
    load = os.getloadavg()[0]
    print(f"CPU: {_cpu_model()} ({os.cpu_count()} cores), python {platform.python_version()}, "
          f"load average {load:.1f}, median of {args.runs} runs\n")
    print("| command | exit status | wall time (s) |\n| --- | --- | --- |")
    for label, argv in rows:
        runs = [_wall(argv, env) for _ in range(args.runs)]
        codes = sorted({code for _, code in runs})
        print(f"| {label} | {', '.join(map(str, codes))} | {statistics.median(t for t, _ in runs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
