"""Timing and peak-memory helpers shared by the benchmarks (Linux /proc based)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the process's peak RSS to its current RSS; return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Peak RSS in bytes since the last :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> tuple[float, int]:
    """Median wall time (s) of ``fn`` over ``repeats`` runs and the peak extra memory (bytes) of one run."""
    for _ in range(warmup):
        fn()
    base = reset_peak_rss()
    fn()
    extra = peak_rss() - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), extra


def load_average() -> str:
    """The 1/5/15-minute load averages, and the share of the last 10 s that runnable tasks waited for a CPU."""
    text = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    psi = Path("/proc/pressure/cpu")
    if psi.exists():
        some = psi.read_text().split()[1]  # "avg10=NN.NN" of the "some" line
        text += f" (CPU pressure {some.split('=')[1]}%)"
    return text + f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"


MiB = 1024 * 1024
