"""The training loop's settings; they live in the config layer (:mod:`sipe.config.engine`), re-exported
here under their old name."""

from sipe.config.engine import TrainConfig, check_global_batch

__all__ = ["TrainConfig", "check_global_batch"]
