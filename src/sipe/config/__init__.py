"""The configuration layer: dataclass configs, YAML + ``key=value`` overrides, run metadata, and the
sections several stages share (:mod:`sipe.config.common`)."""

from sipe.config.common import (
    DATASET_KINDS,
    IS_CAM_SCALES,
    STRIDE,
    AugConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
)
from sipe.config.loader import (
    ConfigError,
    from_dict,
    git_commit,
    load_config,
    numerics_info,
    save_run_info,
    to_dict,
)

__all__ = [
    "DATASET_KINDS",
    "IS_CAM_SCALES",
    "STRIDE",
    "AugConfig",
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "from_dict",
    "git_commit",
    "load_config",
    "numerics_info",
    "save_run_info",
    "to_dict",
]
