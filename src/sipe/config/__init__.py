"""The configuration layer: dataclass configs, YAML + ``key=value`` overrides, the sections several
stages share (:mod:`sipe.config.common`) and the training loop's settings (:mod:`sipe.config.engine`).

Torch-free, and it imports neither the engine nor the models. The run metadata (``save_run_info``,
``git_commit``, ``numerics_info``) moved to :mod:`sipe.engine.run_info`; the old names here still work,
resolved on first access only (PEP 562), so that importing the config layer loads neither.
"""

from sipe.config.common import (
    DATASET_KINDS,
    IS_CAM_SCALES,
    STRIDE,
    AugConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
)
from sipe.config.engine import TrainConfig
from sipe.config.loader import ConfigError, from_dict, load_config, to_dict

# Moved to the engine layer (run metadata needs torch and the process's rank); kept reachable here.
_MOVED = dict.fromkeys(("git_commit", "numerics_info", "save_run_info"), "sipe.engine.run_info")


def __getattr__(name: str) -> object:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASET_KINDS",
    "IS_CAM_SCALES",
    "STRIDE",
    "AugConfig",
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "to_dict",
]
