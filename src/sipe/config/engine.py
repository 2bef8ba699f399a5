"""Optimisation and run settings of the training loop (:func:`sipe.engine.fit`); torch-free, so that the
stages' configs embed them and config errors are reported before torch loads."""

from __future__ import annotations

from dataclasses import dataclass

from sipe.errors import UsageError

__all__ = ["TrainConfig", "check_global_batch"]


@dataclass
class TrainConfig:
    """Optimisation and run settings of :func:`fit` (defaults: the official SIPE recipe)."""

    epochs: int = 5
    batch_size: int = 16  # GLOBAL batch; split evenly across DDP ranks
    lr: float = 0.1  # base lr; each param group scales it by its "lr_mult"
    weight_decay: float = 1e-4
    # The official PolyOptimizerSGD calls SGD(params, lr, weight_decay): the weight decay lands
    # in SGD's positional *momentum* slot, so the paper's models were trained with momentum 1e-4
    # (weight decay still applies through the param groups). Reproduced on purpose; set 0.9 for
    # textbook SGD.
    momentum: float = 1e-4
    poly_power: float = 0.9  # lr = base * lr_mult * (1 - step / max_steps) ** power
    clip_grad_norm: float | None = 1.0
    seed: int = 15
    num_workers: int = 2
    amp: bool = False  # bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA
    channels_last: bool = False
    log_every: int = 10
    ckpt_every: int = 0  # steps; 0 = at each epoch end
    # Also write last.pt whenever this many minutes passed since the last one (0 = off), so that a
    # crash or a kill -9 loses at most that much work; Ctrl-C / SIGTERM always write it first.
    ckpt_minutes: float = 10.0
    val_every: int = 0  # steps; 0 = at each epoch end (only if val_fn given)
    max_steps: int | None = None  # default: (len(dataset) // batch_size) * epochs (drop_last)
    resume: bool = True
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK if available else cpu
    stop_after: int | None = None  # stop (as if interrupted) once this many steps are done
    find_unused_parameters: bool = False  # DDP: only for models whose trainable params may get no grad
    progress: bool = True  # tqdm bar on rank 0


def check_global_batch(num_samples: int, batch_size: int, world_size: int = 1) -> None:
    """Raise :class:`sipe.errors.UsageError` unless ``batch_size`` splits evenly over ``world_size``
    processes and the training set holds at least one global batch (the sampler drops the tail)."""
    if batch_size % world_size:
        raise UsageError(
            f"global batch size {batch_size} must be divisible by the number of processes "
            f"({world_size}); change engine.batch_size or --nproc_per_node"
        )
    if num_samples < batch_size:
        raise UsageError(
            f"the training set has {num_samples} samples, fewer than one global batch "
            f"({batch_size}); lower engine.batch_size or add data"
        )
