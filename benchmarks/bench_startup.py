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


def _wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, capture_output=True, cwd=REPO, check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    tmp = Path(tempfile.mkdtemp())
    cfg = str(REPO / "configs" / "photos.yaml")
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
    ]
    load = os.getloadavg()[0]
    print(f"CPU: {_cpu_model()} ({os.cpu_count()} cores), python {platform.python_version()}, "
          f"load average {load:.1f}, median of {args.runs} runs\n")
    print("| command | wall time (s) |\n| --- | --- |")
    for label, argv in rows:
        times = [_wall(argv, env) for _ in range(args.runs)]
        print(f"| {label} | {statistics.median(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
