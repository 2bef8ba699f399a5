"""One reader of label images and one check of a label map (issue 18): the folder that evaluates also trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sipe.data as D
from sipe import io as sio
from sipe.data.image import read_label_png, read_mask
from sipe.metrics.evaluate import evaluate_label_dir


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return D.generate_synthetic(root, seed=0, n_train=3, n_val=1, image_size=(40, 56), progress=False)


def _rgb_label_folder(base: D.SegDataset, folder: Path) -> Path:
    """The dataset's masks saved as RGB PNGs in the VOC colours, as colour-coding tools write them."""
    for i, name in enumerate(base.names):
        sio.save_image(folder / f"{name}.png", sio.voc_palette()[base.read_mask(i)])
    return folder


def test_rgb_palette_label_folder_is_read_by_evaluation_and_training(synth: Path, tmp_path: Path) -> None:
    base = D.SyntheticDataset(synth, "train")
    folder = _rgb_label_folder(base, tmp_path / "rgb")
    assert {Image.open(p).mode for p in folder.glob("*.png")} == {"RGB"}
    assert read_mask is read_label_png  # the old name is the same reader

    # `sipe eval --kind labels`: every image counted, perfect score.
    rep = evaluate_label_dir(folder, base)
    assert rep["num_images"] == 3 and rep["failed"] == [] and rep["miou"] == pytest.approx(1.0)

    # `sipe seg train`: the same folder as pseudo labels (scale 1, no flip: the crop holds the whole mask).
    from sipe.seg.train import PseudoLabelDataset

    ds = PseudoLabelDataset(base, folder, crop_size=64, scale_range=(1.0, 1.0), flip=False)
    for i in range(len(ds)):
        label = ds[(i, 5)]["label"].numpy()
        mask = base.read_mask(i)
        assert np.array_equal(np.bincount(label[label != 255], minlength=5), np.bincount(mask.ravel(), minlength=5))

    # `sipe refine train-irn`: the same folder as confident-region labels.
    from sipe.refine.train_irn import _read_label

    assert np.array_equal(_read_label(folder, base.names[0], base.read_mask(0).shape), base.read_mask(0))


def test_label_map_check_messages(synth: Path, tmp_path: Path) -> None:
    label = np.array([[0, 1, 255], [3, 0, 0]], np.uint8)
    assert D.check_label_map(label, "x.png", num_classes=4, size=(2, 3)) is label
    with pytest.raises(D.LabelMapError) as err:
        D.check_label_map(label, "x.png", num_classes=3)
    assert str(err.value) == (
        "mask x.png contains class index 3 but the dataset has only 3 classes (0..2, 255 = ignore). "
        "Pass the right class list or fix the mask."
    )
    with pytest.raises(D.DatasetError) as err:  # a LabelMapError is a DatasetError (exit status 1)
        D.check_label_map(label, "x.png", size=(3, 2))
    assert str(err.value) == (
        "mask x.png is 2x3 but its image is 3x2; the mask must be drawn on the same pixels as its image"
    )

    # Through segmentation training: a pseudo label of another size, one with a class the dataset lacks.
    from sipe.seg.train import PseudoLabelDataset

    base = D.SyntheticDataset(synth, "train")
    bad = tmp_path / "bad"
    for name in base.names:
        sio.save_label_png(bad / f"{name}.png", np.zeros((40, 56), np.uint8))
    h, w = base.read_image(0).shape[:2]
    sio.save_label_png(bad / f"{base.names[0]}.png", np.zeros((h, w + 1), np.uint8))
    sio.save_label_png(bad / f"{base.names[1]}.png", np.full(base.read_image(1).shape[:2], 9, np.uint8))
    ds = PseudoLabelDataset(base, bad, crop_size=64)
    with pytest.raises(D.LabelMapError, match=rf"^pseudo label .*{base.names[0]}\.png is {h}x{w + 1} but its image "
                                              rf"is {h}x{w}; pseudo labels must be at the image's resolution$"):
        ds[(0, 0)]
    with pytest.raises(D.LabelMapError, match=rf"^pseudo label .*{base.names[1]}\.png contains class index 9 but the "
                                              r"dataset has only 5 classes \(0\.\.4, 255 = ignore\)\. Make them"):
        ds[(1, 0)]
