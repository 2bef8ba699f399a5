"""Datasets in their real on-disk formats, transforms, and the synthetic generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import sipe.data as D
from sipe.data import coco as coco_mod
from sipe.data import voc as voc_mod
from sipe.data.synthetic import PART_STYLES, draw_synthetic_image
from sipe.data.transforms import crop_box, rescale
from sipe.io import save_label_png, voc_palette

# pycocotools' decode trips numpy 2's __array__(copy=) deprecation in the tests' own reference calls.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# --------------------------------------------------------------------------------------------
# helpers writing the real formats


def write_jpg(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return arr


def voc_xml(objects: list[str], difficult: tuple[int, ...] = (), parts: bool = False) -> str:
    objs = []
    for i, name in enumerate(objects):
        part = "<part><name>head</name><bndbox><xmin>1</xmin></bndbox></part>" if parts else ""
        objs.append(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{int(i in difficult)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            f"<xmax>5</xmax><ymax>5</ymax></bndbox>{part}</object>"
        )
    return f"<annotation><folder>VOC2012</folder><filename>x.jpg</filename>{''.join(objs)}</annotation>"


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """Three VOC images: a palette mask, an SBD (grayscale) mask, and none."""
    root = tmp_path / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    specs = {
        "2007_000001": ["cat", "person"],  # person marked difficult, with a <part> (head)
        "2007_000002": ["dog"],
        "2007_000003": ["tvmonitor", "tvmonitor"],
    }
    for i, (name, objs) in enumerate(specs.items()):
        write_jpg(root / "JPEGImages" / f"{name}.jpg", 12, 16, seed=i)
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(objs, difficult=(1,), parts=(i == 0)))
    m1 = np.zeros((12, 16), np.uint8)
    m1[2:6, 3:9] = 8  # cat
    m1[7:10, 10:14] = 15  # person
    m1[6, :] = 255
    save_label_png(root / "SegmentationClass" / "2007_000001.png", m1)
    m2 = np.zeros((12, 16), np.uint8)
    m2[1:4, 1:4] = 12  # dog
    (root / "SegmentationClassAug").mkdir()
    Image.fromarray(m2, mode="L").save(root / "SegmentationClassAug" / "2007_000002.png")
    (root / "split.txt").write_text("2007_000001\n\n# comment\n2007_000002\n2007_000003\n")
    return root


# --------------------------------------------------------------------------------------------
# VOC


def test_voc_labels_masks_and_class_mapping(voc_root: Path, tmp_path: Path) -> None:
    ds = D.VOCDataset(voc_root, voc_root / "split.txt", cache_dir=tmp_path / "cache")
    assert ds.class_names == list(D.VOC_CLASSES) and ds.num_classes == 21 and len(ds) == 3
    assert ds.names == ["2007_000001", "2007_000002", "2007_000003"]
    it = ds[0]
    assert set(it) == {"image", "labels", "name", "mask"}
    assert it["image"].shape == (12, 16, 3) and it["image"].dtype == np.uint8
    assert it["labels"].dtype == np.float32 and it["labels"].shape == (20,)
    # cat = class 8, person = 15 (difficult objects count, <part> names do not)
    assert np.flatnonzero(it["labels"]).tolist() == [7, 14]
    # palette indices, not colours
    assert it["mask"].dtype == np.uint8
    assert sorted(np.unique(it["mask"]).tolist()) == [0, 8, 15, 255]
    assert it["mask"][3, 4] == 8 and it["mask"][8, 11] == 15
    it1 = ds[1]
    assert np.flatnonzero(it1["labels"]).tolist() == [11]  # dog
    assert it1["mask"][2, 2] == 12 and ds.mask_path(1).parent.name == "SegmentationClassAug"
    assert ds[2]["mask"] is None and np.flatnonzero(ds[2]["labels"]).tolist() == [19]
    assert ds[-1]["name"] == "2007_000003"
    with pytest.raises(IndexError):
        ds[3]
    assert ds.missing_masks() == ["2007_000003"]
    no_masks = D.VOCDataset(voc_root, voc_root / "split.txt", cache_dir=tmp_path / "cache", with_masks=False)
    assert no_masks[0]["mask"] is None


def test_voc_label_cache_used_and_invalidated(voc_root: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    D.VOCDataset(voc_root, voc_root / "split.txt", cache_dir=cache)
    cache_file = cache / "voc_labels.json"
    entries = json.loads(cache_file.read_text())["entries"]
    assert entries["2007_000001"]["objects"] == ["cat", "person"]

    def boom(path):
        raise AssertionError(f"parsed {path} despite the cache")

    monkeypatch.setattr(voc_mod, "parse_voc_xml", boom)
    ds = D.VOCDataset(voc_root, voc_root / "split.txt", cache_dir=cache)
    assert np.flatnonzero(ds.get_labels(1)).tolist() == [11]
    monkeypatch.undo()

    # Rewriting an annotation (new size and mtime) re-parses that entry only.
    xml = voc_root / "Annotations" / "2007_000002.xml"
    xml.write_text(voc_xml(["dog", "horse", "sofa"]))
    os.utime(xml, ns=(1, 1))
    seen = []
    real = voc_mod.parse_voc_xml
    monkeypatch.setattr(voc_mod, "parse_voc_xml", lambda p: seen.append(p.name) or real(p))
    ds = D.VOCDataset(voc_root, voc_root / "split.txt", cache_dir=cache)
    assert seen == ["2007_000002.xml"]
    assert np.flatnonzero(ds.get_labels(1)).tolist() == [11, 12, 17]


def test_voc_default_cache_dir_is_root_or_env(voc_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SIPE_CACHE_DIR", raising=False)
    D.VOCDataset(voc_root, voc_root / "split.txt")
    assert (voc_root / ".sipe_cache" / "voc_labels.json").is_file()
    monkeypatch.setenv("SIPE_CACHE_DIR", str(tmp_path / "envcache"))
    ds = D.VOCDataset(voc_root, voc_root / "split.txt")
    assert ds.cache_dir.parent == tmp_path / "envcache"
    assert (ds.cache_dir / "voc_labels.json").is_file()


def test_voc_shipped_splits_and_split_files(tmp_path: Path) -> None:
    assert D.voc.shipped_splits() == ["train", "train_aug", "val"]
    sizes = {
        s: len(voc_mod.read_split_file(voc_mod.resolve_voc_split(tmp_path, s))) for s in ("train_aug", "train", "val")
    }
    assert sizes == {"train_aug": 10582, "train": 1464, "val": 1449}
    train = set(voc_mod.read_split_file(voc_mod.SPLITS_DIR / "train.txt"))
    val = set(voc_mod.read_split_file(voc_mod.SPLITS_DIR / "val.txt"))
    aug = set(voc_mod.read_split_file(voc_mod.SPLITS_DIR / "train_aug.txt"))
    assert train <= aug and not (val & aug)
    # the official "/JPEGImages/x.jpg /SegmentationClassAug/x.png" line form
    f = tmp_path / "official.txt"
    f.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n2007_000039\n")
    assert voc_mod.read_split_file(f) == ["2007_000032", "2007_000039"]
    # ImageSets/Segmentation/<name>.txt in the root for other names
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "mine.txt").write_text("a\n")
    assert voc_mod.resolve_voc_split(tmp_path, "mine").name == "mine.txt"
    with pytest.raises(D.DatasetError, match="unknown split 'nope'"):
        voc_mod.resolve_voc_split(tmp_path, "nope")


def test_voc_custom_class_list(voc_root: Path, tmp_path: Path) -> None:
    classes = ["cat", "dog", "person", "tvmonitor"]
    ds = D.VOCDataset(voc_root, voc_root / "split.txt", class_names=classes, cache_dir=tmp_path / "c")
    assert ds.class_names == ["background", *classes]
    assert ds.label_matrix.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    # mask index 8 (VOC cat) is out of range for a 5-class list
    with pytest.raises(D.DatasetError, match=r"2007_000001\.png contains class index 15"):
        ds[0]


# --------------------------------------------------------------------------------------------
# COCO


def _uncompressed_rle(m: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixel order, starting with zeros."""
    flat = m.T.reshape(-1)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"size": list(m.shape), "counts": runs}


@pytest.fixture
def coco_root(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "coco"
    h, w = 20, 24
    for i, stem in enumerate(["COCO_val2014_000000000001", "COCO_val2014_000000000002", "COCO_val2014_000000000003"]):
        write_jpg(root / "val2014" / f"{stem}.jpg", h, w, seed=i)
    big = np.zeros((h, w), np.uint8)
    big[2:18, 2:20] = 1
    rle = mask_utils.encode(np.asfortranarray(big))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = np.zeros((h, w), np.uint8)
    crowd[12:19, 0:8] = 1
    poly = [6.0, 4.0, 14.0, 4.0, 14.0, 10.0, 6.0, 10.0]  # small box on top of the big RLE object
    data = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": h, "width": w},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "height": h, "width": w},
            {"id": 3, "file_name": "COCO_val2014_000000000003.jpg", "height": h, "width": w},
        ],
        # unsorted, non-contiguous ids: labels follow sorted id order 1, 3, 7
        "categories": [{"id": 7, "name": "train"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "segmentation": rle, "area": float(big.sum()),
             "bbox": [2, 2, 18, 16], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "segmentation": [poly], "area": 48.0,
             "bbox": [6, 4, 8, 6], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": _uncompressed_rle(crowd),
             "area": float(crowd.sum()), "bbox": [0, 12, 8, 7], "iscrowd": 1},
            {"id": 13, "image_id": 3, "category_id": 3, "segmentation": [poly], "area": 48.0,
             "bbox": [6, 4, 8, 6], "iscrowd": 0},
        ],
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w))).astype(bool)
    return root, {"big": big.astype(bool), "crowd": crowd.astype(bool), "poly": poly_mask}


def test_coco_labels_and_masks(coco_root, tmp_path: Path, monkeypatch) -> None:
    root, regions = coco_root
    ds = D.COCODataset(root, "val", cache_dir=tmp_path / "cache")
    assert ds.class_names == ["background", "person", "car", "train"]
    # image 2 has no annotations: skipped and counted
    assert ds.names == ["COCO_val2014_000000000001", "COCO_val2014_000000000003"]
    assert ds.skipped.names == ["COCO_val2014_000000000002"] and ds.skipped.by_reason() == {"no labels": 1}
    assert ds.label_matrix.tolist() == [[1, 1, 1], [0, 1, 0]]  # crowd person counts as a label

    expected = np.zeros((20, 24), np.uint8)
    expected[regions["crowd"]] = 1  # crowd drawn first
    expected[regions["big"]] = 3  # larger instance (RLE, "train") before the smaller polygon
    expected[regions["poly"]] = 2
    assert regions["poly"].sum() > 20 and (regions["big"] & regions["crowd"]).any()
    it = ds[0]
    np.testing.assert_array_equal(it["mask"], expected)
    png = ds.mask_path(0)
    assert png.is_file() and png.suffix == ".png"
    with Image.open(png) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), expected)

    # second dataset: labels from the cache, masks from the PNGs: the json is not parsed again
    def boom(self):
        raise AssertionError("instances json loaded despite the caches")

    monkeypatch.setattr(coco_mod.COCODataset, "_get_coco", boom)
    ds2 = D.COCODataset(root, "val2014", cache_dir=tmp_path / "cache")
    assert ds2.label_matrix.tolist() == ds.label_matrix.tolist()
    np.testing.assert_array_equal(ds2[0]["mask"], expected)
    monkeypatch.undo()

    ign = D.COCODataset(root, "val", cache_dir=tmp_path / "cache", crowd="ignore")
    assert ign.mask_dir != ds.mask_dir
    m = ign[0]["mask"]
    exp_ign = expected.copy()
    exp_ign[regions["crowd"] & ~regions["big"]] = 255
    np.testing.assert_array_equal(m, exp_ign)
    assert ign.build_masks(progress=False) == 1  # the other image; the first is cached
    assert ign.build_masks(progress=False) == 0


def test_coco_cache_invalidated_when_json_changes(coco_root, tmp_path: Path) -> None:
    root, _ = coco_root
    ds = D.COCODataset(root, "val", cache_dir=tmp_path / "cache")
    ann = root / "annotations" / "instances_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"].append(
        {"id": 14, "image_id": 2, "category_id": 1, "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]],
         "area": 8.0, "bbox": [1, 1, 4, 4], "iscrowd": 0}
    )  # fmt: skip
    ann.write_text(json.dumps(data))
    ds2 = D.COCODataset(root, "val", cache_dir=tmp_path / "cache")
    assert len(ds2) == 3 and len(ds) == 2 and ds2.mask_dir != ds.mask_dir
    assert ds2.get_labels(1).tolist() == [1, 0, 0]


# --------------------------------------------------------------------------------------------
# custom


@pytest.fixture
def custom_root(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_jpg(root / "a.jpg", 10, 14, 1)
    write_jpg(root / "sub" / "b.jpg", 8, 8, 2)
    write_jpg(root / "c.jpg", 9, 9, 3)
    (root / "labels.csv").write_text("image,labels\na.jpg,potted plant;cat\nsub/b.jpg, dog \nc.jpg,\n")
    (root / "labels.json").write_text(json.dumps({"a.jpg": ["potted plant", "cat"], "sub/b.jpg": ["dog"], "c.jpg": []}))
    return root


@pytest.mark.parametrize("fname", ["labels.csv", "labels.json"])
def test_custom_csv_and_json(custom_root: Path, fname: str) -> None:
    ds = D.CustomDataset(custom_root, custom_root / fname, skip_unlabeled=True)
    assert ds.class_names == ["background", "cat", "dog", "potted plant"]  # inferred, sorted
    assert ds.names == ["a", "sub/b"]  # c has no labels: skipped on request and counted
    assert ds.skipped.summary() == "skipped 1 images: 1 no labels"
    assert ds.label_matrix.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert ds[1]["image"].shape == (8, 8, 3) and ds[1]["mask"] is None
    keep = D.CustomDataset(custom_root, custom_root / fname)  # the default: c is a negative
    assert keep.names == ["a", "sub/b", "c"] and keep.get_labels(2).sum() == 0


def test_custom_given_classes_and_masks(custom_root: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    m = np.zeros((10, 14), np.uint8)
    m[2:5, 2:6] = 3
    save_label_png(masks / "a.png", m)
    ds = D.CustomDataset(
        custom_root, custom_root / "labels.csv", class_names=["dog", "potted plant", "cat", "bird"], mask_dir=masks
    )
    assert ds.class_names == ["background", "dog", "potted plant", "cat", "bird"]
    assert ds.label_matrix.tolist() == [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # c: a negative
    np.testing.assert_array_equal(ds[0]["mask"], m)
    assert ds[1]["mask"] is None and ds.missing_masks() == ["sub/b", "c"]
    with pytest.raises(D.MissingMaskError, match=r"sub/b.*Add <name>\.png"):
        ds.require_masks()


def test_build_dataset_factory(voc_root: Path, coco_root, custom_root: Path, tmp_path: Path) -> None:
    assert isinstance(D.build_dataset("voc", voc_root, voc_root / "split.txt", cache_dir=tmp_path / "c"), D.VOCDataset)
    assert isinstance(D.build_dataset("COCO", coco_root[0], "val", cache_dir=tmp_path / "c"), D.COCODataset)
    custom = D.build_dataset("custom", custom_root, "labels.csv")  # relative to the root
    assert isinstance(custom, D.CustomDataset) and len(custom) == 3
    syn = D.generate_synthetic(tmp_path / "syn", seed=1, n_train=3, n_val=2, image_size=64, progress=False)
    s = D.build_dataset("synthetic", syn, "val")
    assert isinstance(s, D.SyntheticDataset) and len(s) == 2
    with pytest.raises(ValueError, match="unknown dataset kind 'imagenet'"):
        D.build_dataset("imagenet", tmp_path, "train")


def test_every_dataset_kind_has_a_builder_and_its_options_follow_the_table(tmp_path: Path) -> None:
    from sipe.config.common import DataConfig
    from sipe.config.dataset_kinds import DATASET_KINDS, kinds_with

    assert set(D._BUILDERS) == set(DATASET_KINDS) and D.DATASET_KINDS is DATASET_KINDS
    assert kinds_with("class_names") == ["voc", "custom"] and kinds_with("mask_dir") == ["custom"]
    for kind in ("coco", "synthetic"):  # class lists fixed by the data: refused before any file is read
        data = DataConfig(kind=kind, root=str(tmp_path), split="train", class_names=["cat"])
        with pytest.raises(ValueError, match=f"data.class_names does not apply to data.kind={kind}: its classes"):
            D.dataset_from_config(data, "train", with_masks=False)
    with pytest.raises(ValueError, match="data.kind must be one of voc, coco, custom, synthetic, got 'imagenet'"):
        DataConfig(kind="imagenet")


# --------------------------------------------------------------------------------------------
# transforms


def test_normalize_values() -> None:
    img = np.array([[[0, 128, 255]]], np.uint8)
    x = D.normalize(img)
    assert x.shape == (3, 1, 1) and x.dtype == np.float32
    expected = (np.array([0, 128, 255]) / 255.0 - np.array(D.IMAGENET_MEAN)) / np.array(D.IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-6)


def test_random_crop_pads_with_zeros_and_valid_mask() -> None:
    img = np.full((30, 50, 3), 200, np.uint8)
    lab = np.full((30, 50), 3, np.uint8)
    out = D.random_resize_flip_crop(img, np.random.default_rng(0), label=lab, crop_size=40, flip=False)
    assert out["image"].shape == (3, 40, 40) and out["image"].dtype == np.float32
    assert out["valid"].shape == (40, 40) and out["valid"].dtype == np.float32
    assert out["label"].shape == (40, 40) and out["label"].dtype == np.uint8
    valid = out["valid"].astype(bool)
    # height 30 < 40: a 30-row band placed at a random offset; width 50 > 40: cut
    assert valid.sum() == 30 * 40 and valid.all(axis=1).sum() == 30
    assert np.all(out["image"][:, ~valid] == 0)  # zero after normalisation
    inside = out["image"][:, valid]
    np.testing.assert_allclose(inside, np.broadcast_to(D.normalize(img)[:, :1, 0], inside.shape), rtol=1e-6)
    assert np.all(out["label"][~valid] == 255) and np.all(out["label"][valid] == 3)


def test_crop_box_matches_official_semantics() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        ct, cb, cl, cr, it, ib, il, ir = crop_box((h, w), 20, rng)
        assert cb - ct == ib - it == min(h, 20) and cr - cl == ir - il == min(w, 20)
        if h > 20:
            assert ct == 0 and 0 <= it <= h - 20
        else:
            assert it == 0 and 0 <= ct <= 20 - h
        if w > 20:
            assert cl == 0 and 0 <= il <= w - 20
        else:
            assert il == 0 and 0 <= cl <= 20 - w


def test_transform_deterministic_given_rng_and_ignores_global_state() -> None:
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    lab = np.random.default_rng(1).integers(0, 5, (60, 80), dtype=np.uint8)
    kw = dict(label=lab, resize_long=(40, 120), scale_range=(0.7, 1.3), crop_size=64)
    np.random.seed(1)
    a = D.random_resize_flip_crop(img, np.random.default_rng(42), **kw)
    np.random.seed(2)
    b = D.random_resize_flip_crop(img, np.random.default_rng(42), **kw)
    for k in ("image", "valid", "label"):
        np.testing.assert_array_equal(a[k], b[k])
    outs = [D.random_resize_flip_crop(img, np.random.default_rng(s), **kw)["image"] for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_resize_long_range_and_flip_consistency() -> None:
    # a label that encodes the column: image and label must move together
    h, w = 40, 64
    cols = np.tile(np.arange(w, dtype=np.uint8)[None, :] * 4, (h, 1))
    img = np.stack([cols, cols, cols], axis=-1)
    longs, flips = set(), set()
    for s in range(30):
        out = D.random_resize_flip_crop(
            img, np.random.default_rng(s), label=cols // 4, resize_long=(32, 48), crop_size=None
        )
        hh, ww = out["image"].shape[1:]
        assert out["valid"].shape == (hh, ww) and out["valid"].all()
        longs.add(max(hh, ww))
        assert 32 <= max(hh, ww) <= 48 and ww == max(hh, ww)
        lab = out["label"].astype(int)
        flipped = lab[0, 0] > lab[0, -1]
        flips.add(bool(flipped))
        red = out["image"][0, 0]  # first row, channel R
        assert (red[0] > red[-1]) == flipped  # image columns flipped exactly when label columns are
    assert len(longs) > 5 and flips == {True, False}


def _official_order(img, lab, rng, resize_long, scale_range, crop):
    """The official pipeline step by step: resize, rescale, normalise, flip, crop (pad 0 / 255)."""
    target = int(rng.integers(resize_long[0], resize_long[1] + 1))
    h, w = img.shape[:2]
    s = target / (h if w < h else w)
    img, lab = rescale(img, s, 3), rescale(lab, s, 0)
    s = scale_range[0] + rng.random() * (scale_range[1] - scale_range[0])
    img, lab = rescale(img, s, 3), rescale(lab, s, 0)
    x = (img / 255.0 - np.array(D.IMAGENET_MEAN)) / np.array(D.IMAGENET_STD)
    if rng.random() < 0.5:
        x, lab = x[:, ::-1], lab[:, ::-1]
    ct, cb, cl, cr, it, ib, il, ir = crop_box(x.shape[:2], crop, rng)
    out = np.zeros((crop, crop, 3))
    out[ct:cb, cl:cr] = x[it:ib, il:ir]
    lab_out = np.full((crop, crop), 255, np.uint8)
    lab_out[ct:cb, cl:cr] = lab[it:ib, il:ir]
    return out.transpose(2, 0, 1), lab_out


def test_transform_equals_official_order() -> None:
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    lab = np.random.default_rng(1).integers(0, 21, (50, 70), dtype=np.uint8)
    for seed in range(8):
        out = D.random_resize_flip_crop(
            img, np.random.default_rng(seed), label=lab, resize_long=(40, 90), scale_range=(0.5, 1.5), crop_size=64
        )
        ref_img, ref_lab = _official_order(img, lab, np.random.default_rng(seed), (40, 90), (0.5, 1.5), 64)
        np.testing.assert_allclose(out["image"], ref_img, atol=1e-5)
        np.testing.assert_array_equal(out["label"], ref_lab)
    np.testing.assert_allclose(
        D.normalize(img),
        ((img / 255.0 - np.array(D.IMAGENET_MEAN)) / np.array(D.IMAGENET_STD)).transpose(2, 0, 1),
        atol=1e-6,
    )


def test_rescale_rounds_like_official() -> None:
    a = np.zeros((7, 9), np.uint8)
    assert rescale(a, 0.5, 0).shape == (4, 4)  # np.round(3.5) = 4, np.round(4.5) = 4
    assert rescale(np.zeros((1, 1, 3), np.uint8), 0.1).shape == (1, 1, 3)


# --------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_generator_is_deterministic(tmp_path: Path) -> None:
    kw = dict(n_train=6, n_val=3, image_size=(64, 96), progress=False)
    a = D.generate_synthetic(tmp_path / "a", seed=7, **kw)
    b = D.generate_synthetic(tmp_path / "b", seed=7, **kw)
    c = D.generate_synthetic(tmp_path / "c", seed=8, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * 9 + 2 + 2
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "JPEGImages" / "train_00000.jpg").read_bytes() != (c / "JPEGImages" / "train_00000.jpg").read_bytes()
    # same arguments: reused as is (nothing rewritten)
    before = (a / "JPEGImages" / "val_00002.jpg").stat().st_mtime_ns
    D.generate_synthetic(tmp_path / "a", seed=7, **kw)
    assert (a / "JPEGImages" / "val_00002.jpg").stat().st_mtime_ns == before


def test_synthetic_drawing_is_stable() -> None:
    """The drawing's output at a fixed seed, recorded from the code before it was split into pieces
    (issue 18): masks, classes and boxes exactly; image sums to 1e-4 (float32 sin may differ in the
    last bit between CPUs). A change in the order of the generator's calls moves all of them."""
    import hashlib

    h, sums = hashlib.sha256(), []
    for i in range(4):
        img, mask, objects = draw_synthetic_image(np.random.default_rng([0, 1, i]), 48, 64, max_objects=3)
        h.update(mask.tobytes())
        h.update(repr([(o["class"], o["box"]) for o in objects]).encode())
        sums.append(int(img.astype(np.int64).sum()))
    assert h.hexdigest()[:16] == "fbe575f998af343f"
    np.testing.assert_allclose(sums, [1304747, 1332700, 1227802, 1326001], rtol=1e-4)


def test_synthetic_objects_masks_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_parts = 0
    for _ in range(20):
        img, mask, objects = draw_synthetic_image(rng, 128, 128, num_classes=4, return_regions=True)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8 and mask.shape == (128, 128)
        assert 1 <= len(objects) <= 3
        assert set(np.unique(mask).tolist()) == {0} | {o["class"] for o in objects}
        for o in objects:
            body, part, cls = o["body"], o["part"], o["class"]
            # the mask covers the whole object: body and part
            assert np.all(mask[body] == cls) and np.all(mask[part] == cls)
            assert part.sum() >= 15 and body.sum() > 3 * part.sum()
            # the part carries the class colour; the body does not
            colour = np.asarray(PART_STYLES[cls - 1][1], float)
            core = (
                part & ~np.roll(~part, 1, 0) & ~np.roll(~part, -1, 0) & ~np.roll(~part, 1, 1) & ~np.roll(~part, -1, 1)
            )
            if cls != 6:  # (the ring has a dark core)
                assert np.abs(img[core].mean(0) - colour).max() < 30
            assert np.abs(img[body].mean(0) - colour).max() > 60
            n_parts += 1
    assert n_parts > 25

    root = D.generate_synthetic(tmp_path / "syn", seed=3, n_train=12, n_val=4, image_size=(96, 128), progress=False)
    ds = D.SyntheticDataset(root, "train")
    assert ds.class_names == ["background", "disk", "square", "triangle", "diamond"] and len(ds) == 12
    assert len(D.SyntheticDataset(root, "val")) == 4
    for i in range(len(ds)):
        it = ds[i]
        assert 96 <= it["image"].shape[0] <= 128 and it["mask"].shape == it["image"].shape[:2]
        present = sorted(set(np.unique(it["mask"]).tolist()) - {0})
        assert np.flatnonzero(it["labels"]).tolist() == [c - 1 for c in present]  # XML labels == mask classes


def test_synthetic_body_appearance_is_shared_across_classes() -> None:
    rng = np.random.default_rng(5)
    means: dict[int, list[np.ndarray]] = {}
    # Body tints vary widely from object to object; enough objects make the class means settle.
    for _ in range(200):
        img, _, objects = draw_synthetic_image(rng, 128, 128, return_regions=True)
        for o in objects:
            means.setdefault(o["class"], []).append(img[o["body"]].mean(0))
    per_class = np.stack([np.mean(v, 0) for v in means.values()])
    assert len(means) == 4
    # class means of the body colour differ far less than the part colours do (~200 levels)
    assert np.ptp(per_class, axis=0).max() < 25


def test_synthetic_palette_and_xml(tmp_path: Path) -> None:
    root = D.generate_synthetic(tmp_path / "s", seed=0, n_train=2, n_val=1, image_size=64, progress=False)
    with Image.open(root / "SegmentationClass" / "train_00000.png") as png:
        png.load()
    assert png.mode == "P" and np.array_equal(
        np.asarray(png.getpalette(), np.uint8)[:9].reshape(3, 3), voc_palette()[:3]
    )
    assert (root / "class_names.txt").read_text().split() == ["background", "disk", "square", "triangle", "diamond"]
    assert voc_mod.parse_voc_xml(root / "Annotations" / "train_00000.xml")
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["seed"] == 0 and meta["n_train"] == 2


def test_synthetic_backgrounds_are_object_free_deterministic_negatives() -> None:
    bg = D.SyntheticBackgrounds(5, num_classes=4, seed=2, image_size=(40, 56))
    assert len(bg) == 5
    items = [bg[i] for i in range(5)]
    for item in items:
        h, w, c = item["image"].shape
        assert 40 <= h <= 56 and 40 <= w <= 56 and c == 3 and item["image"].dtype == np.uint8
        assert item["labels"].dtype == np.float32 and item["labels"].shape == (4,) and not item["labels"].any()
        # No saturated part colour anywhere: backgrounds are greyish.
        img = item["image"].astype(int)
        assert (img.max(axis=2) - img.min(axis=2)).max() < 120
    assert np.array_equal(bg[3]["image"], D.SyntheticBackgrounds(5, 4, seed=2, image_size=(40, 56))[3]["image"])
    assert not np.array_equal(bg[3]["image"], D.SyntheticBackgrounds(5, 4, seed=3, image_size=(40, 56))[3]["image"])
    with pytest.raises(IndexError):
        bg[5]
    _, mask, objects = draw_synthetic_image(np.random.default_rng(0), 48, 48, min_objects=0, max_objects=0)
    assert objects == [] and not mask.any()
    with pytest.raises(ValueError, match="min_objects"):
        draw_synthetic_image(np.random.default_rng(0), 48, 48, min_objects=2, max_objects=1)
