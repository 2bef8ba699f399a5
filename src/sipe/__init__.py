"""sipe: image-level labels to segmentation masks with SIPE (Chen et al., CVPR 2022)."""

from sipe._lazy import lazy_exports

__version__ = "0.1.0"

# Loaded on first use: `import sipe` stays torch-free, so the command line reports mistakes before torch loads.
__getattr__, __dir__ = lazy_exports(__name__, {"Predictor": "predictor", "Prediction": "predictor"})
__all__ = ["Prediction", "Predictor", "__version__"]
