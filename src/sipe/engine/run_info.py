"""What a run folder records about the run that trained it: ``config.yaml`` (the resolved config) and
``run_info.json`` (versions, git commit, command line, what decides the float rounding), written by
rank 0 only. Moved here from the config layer, which stays free of torch and of the engine."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sipe import __version__
from sipe.config.loader import to_dict
from sipe.io import write_text

__all__ = ["NUMERICS_ENV", "git_commit", "numerics_info", "random_weight_keys", "save_run_info"]


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit of the git checkout holding ``path`` (default: this package's source), else "unknown"."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    if out.returncode != 0 or len(commit) != 40:
        return "unknown"
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return commit


# Environment variables that change which kernels run, or how many threads split a reduction.
NUMERICS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
                "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY", "ONEDNN_DEFAULT_FPMATH_MODE")
# CPU flags that decide which oneDNN / MKL / ATen kernels are picked (so the rounding of float sums).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
              "amx_tile", "avx_vnni")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break  # the first core's entry is enough
    except OSError:  # not Linux
        pass
    return model, [f for f in _ISA_FLAGS if f in flags]


def numerics_info() -> dict[str, Any]:
    """What decides a CPU run's float rounding, so that two runs' numbers can be compared.

    The CPU model and the ISA flags oneDNN, MKL and ATen dispatch on, the kernel level ATen uses
    (``cpu_capability``), the torch / oneDNN / MKL / numpy versions, the intra-op thread count and
    the environment variables that change any of these. docs/reproducibility.md says which of
    them changed the demo's numbers.
    """
    import re

    import numpy as np
    import torch

    model, flags = _cpu_model_and_flags()
    config = torch.__config__.show()

    def version(pattern: str) -> str:
        found = re.search(pattern, config)
        return found.group(1) if found else "none"

    return {
        "cpu_model": model,
        "cpu_isa_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "onednn_version": version(r"MKL-DNN (v[\d.]+)"),
        "mkl_version": version(r"Math Kernel Library Version ([\d.]+)"),
        "numpy_version": np.__version__,
        "env": {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ},
    }


def random_weight_keys(config: Any, prefix: str = "") -> list[str]:
    """The dotted keys of every network section of a (nested dict) config that names a ``backbone`` and
    starts from random weights (``weights: null``), e.g. ``["train.model", "seg.model"]`` ("" for the root)."""
    if not isinstance(config, dict):
        return []
    out = [prefix] if "backbone" in config and "weights" in config and config["weights"] is None else []
    for key, value in config.items():
        out += random_weight_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def save_run_info(out_dir: str | os.PathLike, cfg: Any) -> None:
    """Write ``out_dir/config.yaml`` (the resolved config) and ``out_dir/run_info.json``.

    ``run_info.json`` holds the sipe, torch and python versions, the git commit of the source
    checkout ("unknown" outside one), the command line, a UTC timestamp and what decides the
    float rounding (:func:`numerics_info`). Under torchrun only
    rank 0 writes (other ranks return at once), so the files are never written twice.
    """
    import torch

    from sipe.engine.distributed import rank_and_world

    rank, world = rank_and_world()
    if rank != 0:
        return

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    info = {
        "sipe_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config_class": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
        "world_size": world,
        "numerics": numerics_info(),
    }
    random = random_weight_keys(to_dict(cfg))
    if random:
        # Said where a reader looks first: no pretrained backbone makes every later number weaker.
        info["random_weights"] = random
    write_text(out_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
