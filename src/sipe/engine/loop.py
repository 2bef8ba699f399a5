"""The generic training loop: poly SGD, clipping, AMP, channels-last, DDP, checkpoints, resume.

Determinism is designed in: the sampler hands every dataset item an explicit seed derived from
``(seed, epoch, index)``, each global batch is a fixed slice of a per-epoch permutation, and the
whole optimiser state is checkpointed. So a run that is interrupted and resumed, or one sharded
over several DDP ranks with the same global batch, trains the same model as one uninterrupted
single-process run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sipe.engine.checkpoint import check_resume
from sipe.engine.config import TrainConfig
from sipe.engine.distributed import barrier, setup_distributed
from sipe.engine.optim import build_optimizer, set_lr
from sipe.engine.sampler import SeededBatchSampler, sample_seed
from sipe.models.checkpoint import read_checkpoint, write_checkpoint

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


class _StopRequests:
    """SIGINT / SIGTERM while training: remembered, and acted on at the next step boundary.

    A signal that raised at once could land inside ``optimizer.step()``, half-way through updating
    the weights, and the saved state would then match no step. So the first signal only sets
    ``requested``; the loop checkpoints after the step in progress and stops. A second Ctrl-C
    interrupts at once (the default behaviour). Handlers can only be installed in the main thread;
    elsewhere this does nothing and a KeyboardInterrupt is handled by the loop's own checks.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


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
) -> nn.Module:
    """Train ``model`` on ``train_set`` and return the (unwrapped) trained model on every rank.

    ``train_set[(index, seed)]`` must draw all its randomness from ``np.random.default_rng(seed)``.
    ``step_fn(model, batch)`` runs the forward on the device batch and returns ``{"loss": ...}``
    plus other scalars to log. ``param_groups``: ``[{"params": [...], "lr_mult": 1.0}, ...]``.
    Writes ``out_dir/checkpoints/{last,best,final}.pt`` atomically and TensorBoard scalars to
    ``out_dir/tb``; resumes from ``last.pt`` when ``cfg.resume`` and it exists. ``last.pt`` is
    written every ``cfg.ckpt_every`` steps (or epoch), every ``cfg.ckpt_minutes`` minutes, and on
    Ctrl-C / SIGTERM / a KeyboardInterrupt before the loop re-raises KeyboardInterrupt, so that a
    rerun continues from the last finished step and trains exactly the uninterrupted run's model. ``meta`` (plain
    data, e.g. the full run config and class names) is stored in every checkpoint under ``"meta"``.
    ``val_name`` says in the log what ``val_fn`` measures (e.g. "validation IS-CAM mIoU").
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    info = setup_distributed(cfg.device)
    device = info.device

    if cfg.log_every < 1:
        raise ValueError(f"engine.log_every must be >= 1, got {cfg.log_every}")
    sampler = SeededBatchSampler(len(train_set), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    spe = sampler.batches_per_epoch
    max_steps = cfg.max_steps if cfg.max_steps is not None else spe * cfg.epochs
    if max_steps < 1:
        raise ValueError(f"nothing to train: max_steps={max_steps} (epochs={cfg.epochs}, {spe} steps/epoch)")

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(param_groups, cfg, device)
    use_scaler = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    step, best_score = 0, -math.inf
    last_path = ckpt_dir / "last.pt"
    if cfg.resume and last_path.is_file():
        try:
            ckpt = read_checkpoint(last_path, made_by="the interrupted run")
        except ValueError as e:
            raise ValueError(
                f"{e} To resume, the last checkpoint must be complete; to start over instead, delete "
                f"{last_path} or pass --no-resume (engine.resume=false)"
            ) from e
        check_resume(ckpt, cfg, max_steps, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and use_scaler:
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        best_score = float(ckpt.get("best_score", -math.inf))
        if info.is_main:
            print(f"resuming from {last_path} at step {step}/{max_steps}", flush=True)

    wrapped: nn.Module = model
    if info.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )

    cfg_dict = dataclasses.asdict(cfg)

    def checkpoint(name: str, *, full: bool, **extra: Any) -> None:
        if not info.is_main:
            return
        state: dict[str, Any] = {
            "step": step,
            "epoch": step // spe,
            "batch_in_epoch": step % spe,
            "max_steps": max_steps,
            "config": cfg_dict,
            **extra,
        }
        if full:
            state.update(
                optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict() if use_scaler else None,
                best_score=best_score,
            )
        write_checkpoint(ckpt_dir / name, model.state_dict(), meta or {}, **state)

    def validate() -> None:
        nonlocal best_score
        if val_fn is not None and info.is_main:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                score = float(val_fn(model))
            model.train(was_training)
            if writer is not None:
                writer.add_scalar("val/score", score, step)
            if score > best_score:
                best_score = score
                checkpoint("best.pt", full=False, score=score)
            (bar.write if bar is not None else print)(
                f"step {step}: {val_name} {score:.4f} (best {best_score:.4f})"
            )
        barrier(info)

    writer = None
    bar = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_steps, initial=step, unit="step", dynamic_ncols=True, desc="train")

    wrapped.train()
    window: dict[str, torch.Tensor] = {}
    nonfinite = torch.zeros((), device=device)
    window_steps = 0
    t_window = time.perf_counter()
    stop_at = max_steps if cfg.stop_after is None else min(max_steps, cfg.stop_after)
    t_ckpt = time.monotonic()
    updating = False  # True while the weights are being changed: no consistent state to save
    stop = _StopRequests().__enter__()  # left in the outer finally
    try:
        while step < stop_at:
            epoch, start = divmod(step, spe)
            sampler.set_epoch(epoch, start)
            for batch in loader:
                lr = set_lr(optimizer, cfg, step, max_steps)
                # Per-step torch seed: dropout-like randomness is reproducible after a resume.
                torch.manual_seed(sample_seed(cfg.seed, step, info.rank + 1_000_003))
                batch = move_to_device(batch, device, cfg.channels_last)
                with _autocast(device, cfg.amp):
                    out = step_fn(wrapped, batch)
                if "loss" not in out:
                    raise KeyError(f"step_fn must return a dict with key 'loss', got keys {sorted(out)}")
                loss = out["loss"].float()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, max_norm=cfg.clip_grad_norm)
                updating = True
                scaler.step(optimizer)
                scaler.update()
                step += 1
                updating = False

                # Window sums stay on the device (no per-step sync); steps whose loss is not
                # finite are counted apart so one fp16 overflow does not poison the logged means.
                finite = torch.isfinite(loss.detach())
                for k, v in out.items():
                    v = torch.where(finite, v.detach().float().reshape(()), 0.0)
                    window[k] = window[k] + v if k in window else v
                nonfinite = nonfinite + (~finite).float()
                window_steps += 1
                if step % cfg.log_every == 0 or step == stop_at:
                    keys = sorted(window)
                    vals = torch.stack([*(window[k] for k in keys), nonfinite])
                    if info.distributed:
                        dist.all_reduce(vals)  # the global batch's mean, not rank 0's share
                    vals = vals.tolist()
                    total = window_steps * info.world_size
                    bad = int(vals.pop())
                    vals = [v / max(total - bad, 1) for v in vals]
                    if bad and (not use_scaler or bad == total):
                        hint = (
                            "fp16 autocast overflows in the forward pass: set engine.amp=false"
                            if use_scaler
                            else f"lower engine.lr, or check the data; the last good state is {last_path}"
                        )
                        raise FloatingPointError(
                            f"the loss was not finite in {bad} of the last {total} (rank x step) forward "
                            f"passes, up to step {step}; {hint}"
                        )
                    if bad and info.is_main:
                        msg = f"step {step}: skipped {bad} of {total} updates with a non-finite fp16 loss"
                        (bar.write if bar is not None else print)(msg)
                    if info.is_main:
                        elapsed = time.perf_counter() - t_window
                        ips = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                        for k, v in zip(keys, vals, strict=True):
                            writer.add_scalar(f"train/{k}", v, step)
                        writer.add_scalar("train/lr", lr, step)
                        writer.add_scalar("train/images_per_s", ips, step)
                        if bar is not None:
                            post = {k: f"{v:.4f}" for k, v in zip(keys, vals, strict=True)}
                            post.update(lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                            bar.set_postfix(post, refresh=False)
                    window, window_steps, t_window = {}, 0, time.perf_counter()
                    nonfinite = torch.zeros((), device=device)
                if bar is not None:
                    bar.update(1)

                epoch_end = step % spe == 0
                timed = cfg.ckpt_minutes > 0 and time.monotonic() - t_ckpt >= 60.0 * cfg.ckpt_minutes
                requested = stop.requested is not None
                if info.distributed:  # every rank stops after the same step, or the others would hang
                    flag = torch.tensor([float(requested)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    requested = bool(flag.item())
                if requested:
                    raise KeyboardInterrupt(stop.requested or "stop requested on another rank")
                if timed or (cfg.ckpt_every and step % cfg.ckpt_every == 0) or (not cfg.ckpt_every and epoch_end):
                    checkpoint("last.pt", full=True)
                    t_ckpt = time.monotonic()
                if val_fn is not None and (
                    (cfg.val_every and step % cfg.val_every == 0) or (not cfg.val_every and epoch_end)
                ):
                    validate()
                if step >= stop_at:
                    break
        # Always leave a resumable state, also when stopped early on request (cfg.stop_after).
        checkpoint("last.pt", full=True)
        if step >= max_steps:
            if val_fn is not None and not (ckpt_dir / "best.pt").exists():
                validate()
            checkpoint("final.pt", full=False)
    except BaseException as err:
        # Ctrl-C, SIGTERM, or a KeyboardInterrupt from step_fn / the data loader; when a signal was
        # received, a DataLoader worker that died of the same Ctrl-C counts as the interruption too.
        if not (isinstance(err, KeyboardInterrupt) or stop.requested):
            raise
        if updating:  # only with a second Ctrl-C inside optimizer.step(): this state matches no step
            raise
        checkpoint("last.pt", full=True)
        if info.is_main:
            (bar.write if bar is not None else print)(
                f"interrupted at step {step}/{max_steps} ({stop.requested or 'KeyboardInterrupt'}); saved "
                f"{last_path}: rerun the same command to resume"
            )
        raise KeyboardInterrupt(stop.requested or str(err)) from err
    finally:
        stop.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    barrier(info)
    return model
