"""Training checkpoints of :func:`sipe.engine.fit`: when ``last.pt`` is due, writing ``last/best/final.pt``,
and resuming from ``last.pt`` only when it is the same run.

A rerun in the same folder must either continue the run exactly or stop before it writes anything:
:class:`Resumer` reads and checks ``last.pt`` (batch size, seed, planned steps, the stage's ``run_key`` and
the shapes of the weights) before ``fit`` writes a single file, so that a run folder keeps its history.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sipe.config.engine import TrainConfig
from sipe.errors import InputError, RefusedFileError
from sipe.io import read_checkpoint, write_checkpoint

__all__ = ["CheckpointSchedule", "CheckpointWriter", "Resumer", "check_resume", "check_run_key"]


def check_resume(ckpt: Mapping[str, Any], cfg: TrainConfig, max_steps: int, path: Path) -> None:
    """Raise ``ValueError`` unless ``ckpt`` (a loaded ``last.pt``) was trained with this batch size, seed
    and number of planned steps (otherwise the resumed run would not train the uninterrupted run's model)."""
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


def _start_over(ckpt_dir: Path) -> str:
    return f"use another --out, or delete {ckpt_dir} to start over"


def _describe(key: str, value: Any) -> str:
    if isinstance(value, list | tuple):  # e.g. "4 classes (background, circle, square, triangle)"
        shown = ", ".join(map(str, value[:6])) + (", ..." if len(value) > 6 else "")
        return f"{len(value)} {key} ({shown})"
    return f"{key}={value}"


def check_run_key(saved: Mapping[str, Any] | None, now: Mapping[str, Any] | None, ckpt_dir: Path) -> None:
    """Raise :class:`sipe.errors.InputError` (one line) when a run key stored in ``last.pt`` differs from
    this run's: the data, classes or model that a stage names as what makes a run the same run.

    Keys that only one side has are not compared (checkpoints written before the key existed).
    """
    if not saved or not now:
        return
    differ = [k for k in now if k in saved and _plain(saved[k]) != _plain(now[k])]
    if differ:
        then = ", ".join(_describe(k, saved[k]) for k in differ)
        here = ", ".join(_describe(k, now[k]) for k in differ)
        raise InputError(
            f"{ckpt_dir.parent} was trained with {then}; this run has {here}: {_start_over(ckpt_dir)}"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_weights_fit(saved: Mapping[str, torch.Tensor], model: nn.Module, ckpt_dir: Path) -> None:
    """One line instead of ``load_state_dict``'s traceback when ``last.pt`` holds another network."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    wrong = [k for k in own if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        what = f"{k} is {tuple(saved[k].shape)} there, {tuple(own[k].shape)} in this run's model"
    elif missing or unexpected:
        what = (f"{len(missing)} weights missing (e.g. {(missing or ['-'])[0]}), {len(unexpected)} unknown "
                f"(e.g. {(unexpected or ['-'])[0]})")
    else:
        return
    raise InputError(f"{ckpt_dir.parent} holds the checkpoint of another model ({what}): {_start_over(ckpt_dir)}")


class Resumer:
    """Reads ``ckpt_dir/last.pt`` (when ``cfg.resume``), checks that this run may continue it, and restores
    model, optimiser and scaler. Every check runs in :meth:`load`, before ``fit`` writes anything."""

    def __init__(self, ckpt_dir: Path, cfg: TrainConfig, max_steps: int, run_key: Mapping[str, Any] | None) -> None:
        self.path = ckpt_dir / "last.pt"
        self.ckpt_dir, self.cfg, self.max_steps, self.run_key = ckpt_dir, cfg, max_steps, run_key
        self.ckpt: dict[str, Any] | None = None

    def load(self, model: nn.Module) -> bool:
        """Read and check ``last.pt`` (or, of a finished run, ``final.pt``); ``True`` when there is a run to
        continue. Raises ``ValueError`` (one line) for an unreadable file or a run that this one cannot continue."""
        if not self.cfg.resume:
            return False
        final = self.ckpt_dir / "final.pt"
        if not self.path.is_file() and final.is_file():
            self.path = final  # finished: its weights are the run's; no step is left to train
        if not self.path.is_file():
            return False
        try:
            ckpt = read_checkpoint(self.path, made_by="the interrupted run")
        except RefusedFileError as e:  # it asks to run code: nothing to resume; say how to start over
            raise RefusedFileError(f"{e}; to start over instead, delete {self.path} or pass --no-resume") from None
        except ValueError as e:
            raise ValueError(
                f"{e} To resume, the last checkpoint must be complete; to start over instead, delete "
                f"{self.path} or pass --no-resume (engine.resume=false)"
            ) from e
        # What differs most plainly first: other data or classes, then another network, then the plan.
        check_run_key(ckpt.get("run_key"), self.run_key, self.ckpt_dir)
        _check_weights_fit(ckpt["model"], model, self.ckpt_dir)
        check_resume(ckpt, self.cfg, self.max_steps, self.path)
        self.ckpt = ckpt
        return True

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None) -> tuple[int, float]:
        """Load the checked state into ``model``, ``optimizer`` and ``scaler`` (``None``: no scaler in
        use); returns (the step to continue from, the best validation score so far)."""
        ckpt = self.ckpt
        assert ckpt is not None, "Resumer.load() found no checkpoint to restore"
        model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:  # final.pt has none: a finished run takes no further step
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        return int(ckpt["step"]), float(ckpt.get("best_score", -math.inf))


class CheckpointSchedule:
    """When ``last.pt`` and validation are due: every ``ckpt_every`` steps (0: at each epoch end), also
    once ``ckpt_minutes`` passed since the last write; validation every ``val_every`` steps (0: per epoch)."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg, self.spe = cfg, steps_per_epoch
        self.t_last = time.monotonic()

    def last_due(self, step: int) -> bool:
        cfg = self.cfg
        timed = cfg.ckpt_minutes > 0 and time.monotonic() - self.t_last >= 60.0 * cfg.ckpt_minutes
        return timed or (cfg.ckpt_every and step % cfg.ckpt_every == 0) or (not cfg.ckpt_every and step % self.spe == 0)

    def saved(self) -> None:
        self.t_last = time.monotonic()

    def val_due(self, step: int) -> bool:
        every = self.cfg.val_every
        return bool(every and step % every == 0) or (not every and step % self.spe == 0)


@dataclasses.dataclass
class CheckpointWriter:
    """Writes ``ckpt_dir/{last,best,final}.pt`` on rank 0 (other ranks: nothing).

    Full checkpoints (``last.pt``) add the optimiser and scaler state, the best score and the run key
    that :class:`Resumer` checks.
    """

    ckpt_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    cfg: TrainConfig
    steps_per_epoch: int
    max_steps: int
    meta: Mapping[str, Any]
    run_key: Mapping[str, Any] | None
    is_main: bool

    def __post_init__(self) -> None:
        self.cfg_dict = dataclasses.asdict(self.cfg)

    def save(self, name: str, step: int, **extra: Any) -> None:
        """Write ``name`` (``best.pt``, ``final.pt``): the weights, progress and ``extra`` entries."""
        self._write(name, step, extra)

    def save_final(self, step: int, best_score: float) -> None:
        """Write ``final.pt`` of a finished run (with the run key and best score that a rerun checks), then
        remove ``last.pt``: one checkpoint per finished stage. A kill between the two leaves both, never none."""
        extra: dict[str, Any] = {"best_score": best_score}
        if self.run_key is not None:
            extra["run_key"] = dict(self.run_key)
        self._write("final.pt", step, extra)
        if self.is_main:
            (self.ckpt_dir / "last.pt").unlink(missing_ok=True)

    def save_last(self, step: int, best_score: float) -> None:
        """Write the full, resumable ``last.pt``."""
        if not self.is_main:
            return
        full: dict[str, Any] = {"optimizer": self.optimizer.state_dict(),
                                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                                "best_score": best_score}
        if self.run_key is not None:
            full["run_key"] = dict(self.run_key)
        self._write("last.pt", step, full)

    def _write(self, name: str, step: int, extra: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        spe = self.steps_per_epoch
        state = {"step": step, "epoch": step // spe, "batch_in_epoch": step % spe, "max_steps": self.max_steps,
                 "config": self.cfg_dict, **extra}
        write_checkpoint(self.ckpt_dir / name, self.model.state_dict(), self.meta, **state)
