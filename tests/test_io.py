from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from sipe import io


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_written_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_label_png_has_voc_palette(tmp_path):
    io.save_label_png(tmp_path / "l.png", np.array([[0, 1], [15, 255]], dtype=np.uint8))
    img = Image.open(tmp_path / "l.png")
    assert img.mode == "P"
    assert np.array_equal(np.asarray(img), [[0, 1], [15, 255]])
    pal = np.array(img.getpalette()).reshape(-1, 3)
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128] and pal[255].tolist() == [255] * 3
    with pytest.raises(ValueError, match="must be 2-D"):
        io.save_label_png(tmp_path / "bad.png", np.zeros((2, 2, 3)))
