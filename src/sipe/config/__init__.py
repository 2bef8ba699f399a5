"""The configuration layer: dataclass configs, YAML + ``key=value`` overrides, the sections several
stages share (:mod:`sipe.config.common`) and the training loop's settings (:mod:`sipe.config.engine`).

Torch-free, and it imports neither the engine nor the models (the run metadata, ``save_run_info``, lives in
:mod:`sipe.engine.run_info`).
"""

from sipe.config.common import (
    IS_CAM_SCALES,
    STRIDE,
    AugConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
)
from sipe.config.dataset_kinds import DATASET_KINDS
from sipe.config.engine import TrainConfig
from sipe.config.loader import ConfigError, from_dict, load_config, to_dict

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
