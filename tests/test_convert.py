"""classes.json beside mask folders and `sipe convert` to COCO (RLE, checked with pycocotools) and binary PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sipe.cli import main
from sipe.data.classes_file import read_classes_file, write_classes_file
from sipe.data.image import read_label_png
from sipe.io import save_label_png, voc_palette

NAMES = ["background", "cat", "potted plant", "dog"]


def _masks(folder: Path, with_classes: bool = True) -> dict[str, np.ndarray]:
    """Three palette masks of different sizes (one in a subfolder), values 0-3 and 255."""
    rng = np.random.default_rng(0)
    masks = {}
    for name, (h, w) in {"a": (20, 30), "b": (17, 11), "sub/c": (8, 8)}.items():
        m = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w))
        masks[name] = m
        save_label_png(folder / f"{name}.png", m)
    masks["sub/c"][:] = 0  # background only: no annotation
    save_label_png(folder / "sub" / "c.png", masks["sub/c"])
    if with_classes:
        write_classes_file(folder, NAMES, ignore_name="uncertain")
    return masks


def test_classes_json_names_values_colours_and_ignore(tmp_path):
    path = write_classes_file(tmp_path, NAMES, ignore_name="uncertain")
    data = json.loads(path.read_text())
    assert [(c["value"], c["name"]) for c in data["classes"]] == list(enumerate(NAMES))
    assert data["classes"][1]["color"] == voc_palette()[1].tolist() == [128, 0, 0]
    assert data["ignore"] == {"value": 255, "name": "uncertain", "color": [255, 255, 255]}
    back = read_classes_file(path)
    assert back.names == tuple(NAMES) and back.ignore == 255 and back.colors[3] == (128, 128, 0)
    (tmp_path / "names.txt").write_text("cat\npotted plant\ndog\n")
    assert read_classes_file(tmp_path / "names.txt").names == tuple(NAMES)


def test_coco_file_decodes_to_the_masks_pixel_for_pixel(tmp_path, capsys):
    masks = _masks(tmp_path / "m")
    out = tmp_path / "coco.json"
    assert main(["convert", str(tmp_path / "m"), "--to", "coco", "--out", str(out)]) == 0
    assert "3 images, 4 annotations, 3 categories" in capsys.readouterr().out
    coco = COCO(str(out))  # loads as a ground-truth-style file
    data = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "cat"), (2, "potted plant"), (3, "dog")]
    images = {im["file_name"]: im for im in data["images"]}
    assert list(images) == ["a.png", "b.png", "sub/c.png"]  # ids 1, 2, 3 in sorted name order
    assert [im["id"] for im in data["images"]] == [1, 2, 3]
    for name, m in masks.items():
        im = images[f"{name}.png"]
        assert (im["height"], im["width"]) == m.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        assert sorted(a["category_id"] for a in anns) == sorted(set(np.unique(m).tolist()) - {0, 255})
        for a in anns:
            decoded = mask_utils.decode(a["segmentation"])
            assert np.array_equal(decoded.astype(bool), m == a["category_id"])
            assert a["area"] == int((m == a["category_id"]).sum()) and a["iscrowd"] == 0
            assert np.array_equal(coco.annToMask(a).astype(bool), m == a["category_id"])
    # The annotations load as results for COCOeval as well.
    results = coco.loadRes(data["annotations"])
    assert len(results.getAnnIds()) == 4


def test_coco_file_names_the_images_of_an_image_folder(tmp_path):
    _masks(tmp_path / "m")
    photos = tmp_path / "photos"
    for name, suffix in (("a", ".jpg"), ("b", ".png"), ("sub/c", ".JPG")):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(photos / f"{name}{suffix}", format="PNG" if suffix == ".png" else "JPEG")
    out = tmp_path / "coco.json"
    assert main(["convert", str(tmp_path / "m"), "--to", "coco", "--out", str(out), "--image-dir", str(photos)]) == 0
    assert [im["file_name"] for im in json.loads(out.read_text())["images"]] == ["a.jpg", "b.png", "sub/c.JPG"]


def test_binary_pngs_one_per_class_present(tmp_path):
    masks = _masks(tmp_path / "m")
    out = tmp_path / "bin"
    assert main(["convert", str(tmp_path / "m"), "--to", "binary", "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = sorted(f"{NAMES[v]}/{n}.png" for n, m in masks.items() for v in set(np.unique(m).tolist()) - {0, 255})
    assert written == expected
    for rel in written:
        cls, name = rel.split("/", 1)
        png = np.asarray(Image.open(out / rel))
        assert png.dtype == np.uint8 and set(np.unique(png).tolist()) <= {0, 255}
        assert np.array_equal(png == 255, masks[name.removesuffix(".png")] == NAMES.index(cls))


def test_a_folder_without_classes_json_names_the_fix(tmp_path, capsys):
    masks = _masks(tmp_path / "m", with_classes=False)
    assert main(["convert", str(tmp_path / "m"), "--to", "coco", "--out", str(tmp_path / "c.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no classes.json" in err[0] and "--classes FILE" in err[0]
    assert not (tmp_path / "c.json").exists()
    (tmp_path / "names.txt").write_text("cat\npotted plant\ndog\n")
    assert main(["convert", str(tmp_path / "m"), "--to", "binary", "--out", str(tmp_path / "b"),
                 "--classes", str(tmp_path / "names.txt")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / "cat" / "a.png")) == 255, masks["a"] == 1)
    # A value the classes do not name is an error naming the file.
    (tmp_path / "two.txt").write_text("cat\n")
    assert main(["convert", str(tmp_path / "m"), "--to", "coco", "--out", str(tmp_path / "c.json"),
                 "--classes", str(tmp_path / "two.txt")]) == 1
    assert "a.png holds pixel value 2" in capsys.readouterr().err


def test_predict_writes_classes_json_beside_its_masks(tmp_path):
    from helpers import save_seg_checkpoint, tiny_seg_model

    model, spec = tiny_seg_model(["background", "cat", "dog"])
    ckpt = save_seg_checkpoint(model, spec, tmp_path / "seg.pt")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "x.jpg")
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "x.jpg"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert read_classes_file(out / "classes.json").names == ("background", "cat", "dog")
    assert read_label_png(out / "x.png").shape == (32, 40)
    assert main(["convert", str(out), "--to", "coco", "--out", str(tmp_path / "p.json")]) == 0


@pytest.mark.parametrize("bad", ["{", '{"classes": [{"value": 1, "name": "a", "color": [1, 2, 3]}]}'])
def test_a_broken_classes_json_is_named(tmp_path, bad):
    (tmp_path / "classes.json").write_text(bad)
    with pytest.raises(ValueError, match="classes.json"):
        read_classes_file(tmp_path / "classes.json")
