"""What identifies a dataset's content wherever it lies: image names, decoded sizes, labels, class list.

Run folders record this instead of the dataset's absolute root, so that a moved run folder (or a moved
dataset) is still the same run, and a labels file that lost only rows of images skipped anyway is no change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["images_fingerprint"]


def images_fingerprint(ds: Any, masks: bool = False) -> str:
    """``"<N> images <hash>"`` over ``ds``'s class list and, per image, its name, decoded size (from the
    cache that :meth:`SegDataset.drop_small` filled: nothing is decoded again) and image-level labels;
    with ``masks``, also the bytes of each ground-truth mask file."""
    h = hashlib.sha1(",".join(ds.class_names).encode())
    sizes = ds.decode_checks() if hasattr(ds, "decode_checks") else [None] * len(ds)
    for i, name in enumerate(ds.names):
        h.update(f"\n{name}:{sizes[i]}:".encode())
        h.update(np.asarray(ds.get_labels(i), np.uint8).tobytes())
        mask = ds.mask_path(i) if masks else None
        if mask is not None:
            h.update(hashlib.sha1(Path(mask).read_bytes()).digest())
    return f"{len(ds)} images {h.hexdigest()[:16]}"
