"""The jobs :func:`sipe.engine.fit` does around each step, one class each: the rank-0 output (TensorBoard,
progress bar), the logging window, validation, and the stop requests of Ctrl-C / SIGTERM."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sipe.engine.checkpoint import CheckpointWriter
from sipe.engine.distributed import DistInfo, barrier

__all__ = ["LogWindow", "RunOutput", "StopRequests", "Validation"]


class RunOutput:
    """Rank 0's TensorBoard writer (``out_dir/tb``) and tqdm bar (when ``progress``); nothing elsewhere."""

    def __init__(self, out_dir: Path, is_main: bool, progress: bool, max_steps: int, initial: int) -> None:
        self.writer: Any = None
        self.bar: Any = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"))
            if progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=max_steps, initial=initial, unit="step", dynamic_ncols=True, desc="train")

    def say(self, message: str) -> None:
        """Print one line (above the bar when there is one)."""
        (self.bar.write if self.bar is not None else print)(message)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class LogWindow:
    """The means of the step outputs over the last ``log_every`` steps, over every rank.

    Sums stay on the device (no per-step sync); steps whose loss is not finite are counted apart so
    that one fp16 overflow does not poison the logged means. Too many of them raise
    ``FloatingPointError`` naming the fix.
    """

    def __init__(self, info: DistInfo, batch_size: int, use_scaler: bool, last_path: Path) -> None:
        self.info, self.batch_size, self.use_scaler, self.last_path = info, batch_size, use_scaler, last_path
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.nonfinite = torch.zeros((), device=self.info.device)
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, out: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        """Add one step's outputs (scalars) and its float32 ``loss``."""
        finite = torch.isfinite(loss.detach())
        for k, v in out.items():
            v = torch.where(finite, v.detach().float().reshape(()), 0.0)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.nonfinite = self.nonfinite + (~finite).float()
        self.steps += 1

    def flush(self, step: int, lr: float, output: RunOutput) -> None:
        """Log the window's means at ``step`` (TensorBoard, bar postfix) and start a new window."""
        keys = sorted(self.sums)
        vals = torch.stack([*(self.sums[k] for k in keys), self.nonfinite])
        if self.info.distributed:
            dist.all_reduce(vals)  # the global batch's mean, not rank 0's share
        vals = vals.tolist()
        total = self.steps * self.info.world_size
        bad = int(vals.pop())
        vals = [v / max(total - bad, 1) for v in vals]
        self._check_finite(bad, total, step, output)
        if self.info.is_main:
            ips = self.steps * self.batch_size / max(time.perf_counter() - self.t0, 1e-9)
            for k, v in zip(keys, vals, strict=True):
                output.scalar(f"train/{k}", v, step)
            output.scalar("train/lr", lr, step)
            output.scalar("train/images_per_s", ips, step)
            if output.bar is not None:
                post = {k: f"{v:.4f}" for k, v in zip(keys, vals, strict=True)}
                post.update(lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                output.bar.set_postfix(post, refresh=False)
        self.reset()

    def _check_finite(self, bad: int, total: int, step: int, output: RunOutput) -> None:
        if bad and (not self.use_scaler or bad == total):
            hint = (
                "fp16 autocast overflows in the forward pass: set engine.amp=false"
                if self.use_scaler
                else f"lower engine.lr, or check the data; the last good state is {self.last_path}"
            )
            raise FloatingPointError(
                f"the loss was not finite in {bad} of the last {total} (rank x step) forward "
                f"passes, up to step {step}; {hint}"
            )
        if bad and self.info.is_main:
            output.say(f"step {step}: skipped {bad} of {total} updates with a non-finite fp16 loss")


class Validation:
    """Runs ``val_fn(model)`` on rank 0 (eval mode, no grad), keeps the best score and writes ``best.pt``
    when it improves; every rank then waits at a barrier."""

    def __init__(self, val_fn: Callable[[nn.Module], float] | None, val_name: str, model: nn.Module,
                 info: DistInfo, output: RunOutput, checkpoints: CheckpointWriter,
                 best_score: float = -math.inf) -> None:
        self.val_fn, self.val_name, self.model, self.info = val_fn, val_name, model, info
        self.output, self.checkpoints, self.best_score = output, checkpoints, best_score

    def __call__(self, step: int) -> None:
        if self.val_fn is not None and self.info.is_main:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                score = float(self.val_fn(self.model))
            self.model.train(was_training)
            self.output.scalar("val/score", score, step)
            if score > self.best_score:
                self.best_score = score
                self.checkpoints.save("best.pt", step, score=score)
            self.output.say(f"step {step}: {self.val_name} {score:.4f} (best {self.best_score:.4f})")
        barrier(self.info)


class StopRequests:
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

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def raise_if_requested(self, info: DistInfo) -> None:
        """Raise ``KeyboardInterrupt`` when a stop was requested here or (under DDP) on any rank: every
        rank stops after the same step, or the others would hang."""
        requested = self.requested is not None
        if info.distributed:
            flag = torch.tensor([float(requested)], device=info.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            raise KeyboardInterrupt(self.requested or "stop requested on another rank")

    def is_interruption(self, err: BaseException) -> bool:
        """Ctrl-C, SIGTERM, or a KeyboardInterrupt from the step / the data loader; once a signal was
        received, a DataLoader worker that died of the same Ctrl-C counts as the interruption too."""
        return isinstance(err, KeyboardInterrupt) or self.requested is not None
