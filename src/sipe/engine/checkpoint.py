"""Training checkpoints: resuming from ``last.pt`` with checks that the run is the same one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sipe.engine.config import TrainConfig

__all__ = ["check_resume"]


def check_resume(ckpt: Mapping[str, Any], cfg: TrainConfig, max_steps: int, path: Path) -> None:
    saved = ckpt.get("config", {})
    for key, now in (("batch_size", cfg.batch_size), ("seed", cfg.seed)):
        if key in saved and saved[key] != now:
            raise ValueError(
                f"cannot resume from {path}: it was trained with {key}={saved[key]}, this run has "
                f"{key}={now}; use the same setting, another output folder, or --no-resume"
            )
    if ckpt.get("max_steps", max_steps) != max_steps:
        raise ValueError(
            f"cannot resume from {path}: it plans {ckpt['max_steps']} steps, this run {max_steps} "
            "(epochs, max_steps or dataset size changed); use another output folder or --no-resume"
        )
