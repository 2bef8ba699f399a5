"""sipe: image-level labels to segmentation masks with SIPE (Chen et al., CVPR 2022)."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["Prediction", "Predictor", "__version__"]

# The notebook API, imported on first use: `import sipe` stays torch-free (the command line reports mistakes before
# torch loads), and the package root, which every layer may import for `__version__`, imports nothing above it.
_EXPORTS = {"Predictor": "sipe.predictor", "Prediction": "sipe.predictor"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
