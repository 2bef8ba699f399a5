"""Public name kept for the API: the losses live in :mod:`sipe.core.losses`."""

from sipe.core.losses import classification_loss, gsc_loss

__all__ = ["classification_loss", "gsc_loss"]
