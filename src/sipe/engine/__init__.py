"""The generic training engine: configuration, torchrun/DDP, deterministic sampling, SGD + poly
schedule, resumable checkpoints and the loop (:func:`fit`) that every training stage runs.

The exports load lazily: ``sipe.engine.env`` and ``TrainConfig`` (whose home is :mod:`sipe.config.engine`)
are importable without torch.
"""

from sipe._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "sipe.config.engine",
    **dict.fromkeys(("DEVICE_CHOICES", "DistInfo", "barrier", "is_main_process", "rank_and_world", "resolve_device",
                     "setup_distributed", "shard_indices"), "distributed"),
    **dict.fromkeys(("TorchrunEnv", "torchrun_env"), "env"),
    **dict.fromkeys(("fit", "move_to_device"), "loop"),
    **dict.fromkeys(("build_optimizer", "poly_lr", "set_lr"), "optim"),
    **dict.fromkeys(("NUMERICS_ENV", "git_commit", "numerics_info", "save_run_info"), "run_info"),
    **dict.fromkeys(("SeededBatchSampler", "repeat_factors", "sample_seed"), "sampler"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
