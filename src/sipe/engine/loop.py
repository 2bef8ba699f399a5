"""The generic training loop: poly SGD, clipping, AMP, channels-last, DDP, checkpoints, resume.

Determinism is designed in: the sampler hands every dataset item an explicit seed derived from
``(seed, epoch, index)``, each global batch is a fixed slice of a per-epoch permutation, and the
whole optimiser state is checkpointed. So a run that is interrupted and resumed, or one sharded
over several DDP ranks with the same global batch, trains the same model as one uninterrupted
single-process run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sipe.config.engine import TrainConfig
from sipe.engine.checkpoint import CheckpointSchedule, CheckpointWriter, Resumer
from sipe.engine.distributed import DistInfo, barrier, setup_distributed
from sipe.engine.hooks import LogWindow, RunOutput, StopRequests, Validation
from sipe.engine.optim import build_optimizer, set_lr
from sipe.engine.sampler import SeededBatchSampler, sample_seed

__all__ = ["fit", "move_to_device"]


def move_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device``; 4-D float tensors optionally channels-last."""
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.ndim == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device, channels_last) for v in batch)
    return batch


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Stepper:
    """One optimisation step of the (DDP-wrapped) model: poly lr, a per-step torch seed, the forward
    under autocast, backward, clipping and the optimiser update. ``step`` counts the finished steps;
    ``updating`` is true only while the weights change (a state that matches no step)."""

    def __init__(self, wrapped: nn.Module, step_fn: Callable[[nn.Module, dict], dict[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: TrainConfig,
                 info: DistInfo, step: int) -> None:
        self.wrapped, self.step_fn, self.optimizer, self.scaler = wrapped, step_fn, optimizer, scaler
        self.cfg, self.info, self.step, self.updating = cfg, info, step, False
        self.trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def __call__(self, batch: Any, max_steps: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        """Train on one batch; returns the step's outputs, its float32 loss and the base lr it used."""
        cfg, device = self.cfg, self.info.device
        lr = set_lr(self.optimizer, cfg, self.step, max_steps)
        # Per-step torch seed: dropout-like randomness is reproducible after a resume.
        torch.manual_seed(sample_seed(cfg.seed, self.step, self.info.rank + 1_000_003))
        batch = move_to_device(batch, device, cfg.channels_last)
        with _autocast(device, cfg.amp):
            out = self.step_fn(self.wrapped, batch)
        if "loss" not in out:
            raise KeyError(f"step_fn must return a dict with key 'loss', got keys {sorted(out)}")
        loss = out["loss"].float()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, max_norm=cfg.clip_grad_norm)
        self.updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.updating = False
        return out, loss, lr


def _plan(num_samples: int, cfg: TrainConfig, info: DistInfo,
          weights: Sequence[float] | None = None) -> tuple[SeededBatchSampler, int]:
    """This rank's batch sampler (weighted draws with ``weights``) and the run's number of optimiser steps."""
    if cfg.log_every < 1:
        raise ValueError(f"engine.log_every must be >= 1, got {cfg.log_every}")
    sampler = SeededBatchSampler(num_samples, cfg.batch_size, cfg.seed, info.rank, info.world_size, weights)
    spe = sampler.batches_per_epoch
    max_steps = cfg.max_steps if cfg.max_steps is not None else spe * cfg.epochs
    if max_steps < 1:
        raise ValueError(f"nothing to train: max_steps={max_steps} (epochs={cfg.epochs}, {spe} steps/epoch)")
    return sampler, max_steps


def _wrap(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """``model`` in DDP under torchrun (after the resume: DDP broadcasts rank 0's weights), else itself."""
    if not info.distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=cfg.find_unused_parameters,
    )


def _start_run(out_dir: Path, run_config: Any, on_start: Callable[[], None] | None, info: DistInfo) -> None:
    """The run starts (the resume checks passed): only now does it write its run folder's records."""
    if run_config is not None:
        from sipe.engine.run_info import save_run_info

        save_run_info(out_dir, run_config)  # rank 0 only
    if on_start is not None and info.is_main:
        on_start()


class _StepJobs:
    """What the loop does after each step and at its end: the logging window, ``last.pt`` when due, the
    stop-request check, validation when due; ``final.pt`` at the end; ``last.pt`` when interrupted."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, output: RunOutput, checkpoints: CheckpointWriter,
                 validation: Validation, last_path: Path, steps_per_epoch: int) -> None:
        self.cfg, self.info, self.output, self.checkpoints, self.validation = cfg, info, output, checkpoints, validation
        self.last_path = last_path
        self.window = LogWindow(info, cfg.batch_size, checkpoints.scaler is not None, last_path)
        self.schedule = CheckpointSchedule(cfg, steps_per_epoch)

    def after_step(self, step: int, out: dict[str, torch.Tensor], loss: torch.Tensor, lr: float,
                   stop: StopRequests, stop_at: int) -> None:
        """After optimiser step ``step`` (1-based count of finished steps); raises ``KeyboardInterrupt``
        on a stop request (from any rank), after the step and before any checkpoint of it."""
        self.window.add(out, loss)
        # Step 1 too: a curve starts at the untrained model's loss (a short run otherwise shows two points
        # late in training, and "did the loss fall?" has no start to compare with).
        if step % self.cfg.log_every == 0 or step == stop_at or step == 1:
            self.window.flush(step, lr, self.output)
        self.output.advance()
        save_last = self.schedule.last_due(step)
        stop.raise_if_requested(self.info)
        if save_last:
            self.checkpoints.save_last(step, self.validation.best_score)
            self.schedule.saved()
        if self.validation.val_fn is not None and self.schedule.val_due(step):
            self.validation(step)

    def finish(self, step: int, max_steps: int) -> None:
        """Always leave a resumable state: ``last.pt`` when stopped early on request (``engine.stop_after``);
        a finished run validates once more if it never did and keeps one checkpoint, ``final.pt`` (a rerun
        resumes from it without training; ``last.pt``, as large, is removed once ``final.pt`` is written)."""
        if step < max_steps:
            self.checkpoints.save_last(step, self.validation.best_score)
            return
        if self.validation.val_fn is not None and not (self.checkpoints.ckpt_dir / "best.pt").exists():
            self.validation(step)
        self.checkpoints.save_final(step, self.validation.best_score)

    def interrupted(self, step: int, max_steps: int, requested: str | None) -> None:
        """Save ``last.pt`` after an interruption at a step boundary and say how to resume."""
        self.checkpoints.save_last(step, self.validation.best_score)
        if self.info.is_main:
            self.output.say(f"interrupted at step {step}/{max_steps} ({requested or 'KeyboardInterrupt'}); "
                            f"saved {self.last_path}: rerun the same command to resume")


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    train_set: Dataset,
    step_fn: Callable[[nn.Module, dict], dict[str, torch.Tensor]],
    param_groups: list[dict],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    val_fn: Callable[[nn.Module], float] | None = None,
    val_name: str = "validation score",
    collate_fn: Callable | None = None,
    meta: Mapping[str, Any] | None = None,
    run_config: Any = None,
    run_key: Mapping[str, Any] | None = None,
    on_start: Callable[[], None] | None = None,
    sample_weights: Sequence[float] | None = None,
) -> nn.Module:
    """Train ``model`` on ``train_set`` and return the (unwrapped) trained model on every rank.

    ``train_set[(index, seed)]`` must draw all its randomness from ``np.random.default_rng(seed)``.
    ``step_fn(model, batch)`` runs the forward on the device batch and returns ``{"loss": ...}``
    plus other scalars to log. ``param_groups``: ``[{"params": [...], "lr_mult": 1.0}, ...]``.
    Writes ``out_dir/checkpoints/{last,best,final}.pt`` atomically and TensorBoard scalars to
    ``out_dir/tb`` (from step 1); resumes from ``last.pt`` when ``cfg.resume`` and it exists (a finished run
    keeps ``final.pt`` only: a rerun then loads it and trains no step). ``last.pt`` is
    written every ``cfg.ckpt_every`` steps (or epoch), every ``cfg.ckpt_minutes`` minutes, and on
    Ctrl-C / SIGTERM / a KeyboardInterrupt before the loop re-raises KeyboardInterrupt, so that a
    rerun continues from the last finished step and trains exactly the uninterrupted run's model. ``meta`` (plain
    data, e.g. the full run config and class names) is stored in every checkpoint under ``"meta"``.
    ``val_name`` says in the log what ``val_fn`` measures (e.g. "validation IS-CAM mIoU").

    A run folder keeps its history: ``run_key`` (plain data naming what makes this the same run, e.g.
    ``{"classes": [...], "data.root": ...}``) is stored in ``last.pt``, and a rerun whose key or network
    differs stops with one line (:class:`sipe.errors.InputError`) before anything is written. Only then
    are ``run_config`` (``out_dir/config.yaml`` and ``run_info.json``) and ``on_start()`` (rank 0: a
    stage's own files) written.

    ``sample_weights`` (one per item of ``train_set``): each epoch draws its items with replacement in
    proportion to them (class-aware sampling, :func:`sipe.engine.sampler.repeat_factors`) instead of a
    permutation; ``None``: every item once per epoch.
    """
    out_dir = Path(out_dir)
    info = setup_distributed(cfg.device)
    sampler, max_steps = _plan(len(train_set), cfg, info, sample_weights)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(param_groups, cfg, info.device)
    use_scaler = cfg.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    resumer = Resumer(out_dir / "checkpoints", cfg, max_steps, run_key)
    step, best_score = 0, float("-inf")
    if resumer.load(model):
        step, best_score = resumer.restore(model, optimizer, scaler if use_scaler else None)
        if info.is_main:
            print(f"resuming from {resumer.path} at step {step}/{max_steps}", flush=True)
    _start_run(out_dir, run_config, on_start, info)
    stepper = _Stepper(_wrap(model, cfg, info), step_fn, optimizer, scaler, cfg, info, step)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                        pin_memory=info.device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    checkpoints = CheckpointWriter(out_dir / "checkpoints", model, optimizer, scaler if use_scaler else None, cfg,
                                   sampler.batches_per_epoch, max_steps, meta or {}, run_key, info.is_main)
    output = RunOutput(out_dir, info.is_main, cfg.progress, max_steps, step)
    jobs = _StepJobs(cfg, info, output, checkpoints, Validation(val_fn, val_name, model, info, output, checkpoints,
                                                                 best_score), out_dir / "checkpoints" / "last.pt",
                      sampler.batches_per_epoch)
    stop_at = max_steps if cfg.stop_after is None else min(max_steps, cfg.stop_after)
    stepper.wrapped.train()
    stop = StopRequests().__enter__()  # left in the finally below
    try:
        while stepper.step < stop_at:
            sampler.set_epoch(*divmod(stepper.step, sampler.batches_per_epoch))
            for batch in loader:
                out, loss, lr = stepper(batch, max_steps)
                jobs.after_step(stepper.step, out, loss, lr, stop, stop_at)
                if stepper.step >= stop_at:
                    break
        jobs.finish(stepper.step, max_steps)
    except BaseException as err:
        # Not after a second Ctrl-C inside optimizer.step(): that state matches no step.
        if not stop.is_interruption(err) or stepper.updating:
            raise
        jobs.interrupted(stepper.step, max_steps, stop.requested)
        raise KeyboardInterrupt(stop.requested or str(err)) from err
    finally:
        stop.__exit__(None, None, None)
        output.close()
    barrier(info)
    return model
