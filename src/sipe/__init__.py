"""sipe: image-level labels to segmentation masks with SIPE (Chen et al., CVPR 2022)."""

__version__ = "0.1.0"
