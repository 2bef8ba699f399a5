"""Public name kept for the API: multi-scale IS-CAM inference lives in :mod:`sipe.cams.multiscale`."""

from sipe.cams.multiscale import DEFAULT_SCALES, fused_maps, multiscale_is_cam

__all__ = ["DEFAULT_SCALES", "fused_maps", "multiscale_is_cam"]
