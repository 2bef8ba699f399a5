"""Public name kept for the API: official checkpoints are read by :mod:`sipe.models.official`."""

from sipe.models.checkpoint import load_checkpoint
from sipe.models.official import from_official

__all__ = ["from_official", "load_checkpoint"]
