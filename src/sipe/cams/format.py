"""Public names kept for the API: the per-image CAM / IS-CAM file format lives in
:mod:`sipe.data.cam_format`, beside the other file formats in the data layer, so that the layers
below the stages (metrics, vis) read CAM files without importing a stage."""

from sipe.data.cam_format import *  # noqa: F403 - the whole module, re-exported under its old name
from sipe.data.cam_format import __all__  # noqa: F401
