"""Public names kept for the API: the per-image CAM / IS-CAM file format lives in
:mod:`sipe.data.cam_format`, beside the other file formats in the data layer, so that the layers
below the stages (metrics, vis) read CAM files without importing a stage."""

from sipe.data.cam_format import (
    CAM_KINDS,
    CamFile,
    check_cam_arrays,
    find_cam_file,
    is_cam_to_label,
    read_cam_file,
    read_is_cam,
    write_cam_file,
)

__all__ = [
    "CAM_KINDS",
    "CamFile",
    "check_cam_arrays",
    "find_cam_file",
    "is_cam_to_label",
    "read_cam_file",
    "read_is_cam",
    "write_cam_file",
]
