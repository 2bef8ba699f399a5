"""Every kind of bad input of issue 3: converted correctly, or a clear error naming the file and the fix."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sipe.data as D
from sipe.io import save_label_png, voc_palette


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow cannot write itself."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(data + _png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------
# image modes


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = D.read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], g) and np.array_equal(out[..., 2], g)
    Image.fromarray(g > 100).save(tmp_path / "b.png")  # mode "1"
    assert set(np.unique(D.read_image(tmp_path / "b.png")).tolist()) == {0, 255}


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., 0] = 200
    a[0, :, 3] = 255  # opaque red-ish
    a[1, 0, 3] = 0  # fully transparent
    a[1, 1, 3] = 128  # half
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    out = D.read_image(tmp_path / "a.png")
    assert out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[1, 0].tolist() == [255, 255, 255]
    np.testing.assert_allclose(out[1, 1], [200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255], atol=1)
    black = D.read_image(tmp_path / "a.png", alpha_background=(0, 0, 0))
    assert black[1, 0].tolist() == [0, 0, 0]
    # LA (grayscale + alpha)
    Image.fromarray(np.stack([np.full((2, 2), 50, np.uint8), np.zeros((2, 2), np.uint8)], -1), mode="LA").save(
        tmp_path / "la.png"
    )
    assert D.read_image(tmp_path / "la.png").tolist() == np.full((2, 2, 3), 255).tolist()


def test_palette_images_give_colours(tmp_path: Path) -> None:
    p = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    p.putpalette([10, 20, 30, 200, 0, 0, 0, 250, 0] + [0] * (253 * 3))
    p.save(tmp_path / "p.png")
    out = D.read_image(tmp_path / "p.png")
    assert (
        out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 0, 0] and out[1, 0].tolist() == [0, 250, 0]
    )
    p.save(tmp_path / "pt.png", transparency=1)  # index 1 transparent
    out = D.read_image(tmp_path / "pt.png")
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [10, 20, 30]


def test_cmyk_jpeg_and_tiff(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red
    img.save(tmp_path / "c.jpg", quality=95)
    img.save(tmp_path / "c.tif")
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    for name in ("c.jpg", "c.tif"):
        out = D.read_image(tmp_path / name)
        assert out.shape == (6, 8, 3)
        np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=3)


def test_sixteen_bit_scaled_not_clipped(tmp_path: Path) -> None:
    g = np.array([[0, 257 * 128, 65535, 1000]], np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    out = D.read_image(tmp_path / "g16.png")
    assert out[0, :, 0].tolist() == [0, 128, 255, 4]  # clipping would give [0, 255, 255, 255]
    Image.fromarray(g).save(tmp_path / "g16.tif")
    assert D.read_image(tmp_path / "g16.tif")[0, :, 1].tolist() == [0, 128, 255, 4]
    rgb = np.array([[[65535, 0, 0x8000], [0x1234, 0xFFFF, 0]]], np.uint16)
    write_png16_rgb(tmp_path / "rgb16.png", rgb)
    out = D.read_image(tmp_path / "rgb16.png")
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_allclose(out.astype(int), np.round(rgb / 257.0), atol=1)
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    assert D.read_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_exif_rotated_photo_comes_out_upright(tmp_path: Path) -> None:
    stored = np.zeros((10, 20, 3), np.uint8)  # stored landscape: left half red, right half blue
    stored[:, :10] = (255, 0, 0)
    stored[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    up = D.read_image(tmp_path / "r.jpg")
    assert up.shape == (20, 10, 3)
    assert up[2, 5, 0] > 200 and up[2, 5, 2] < 50  # the stored left (red) is now on top
    assert up[17, 5, 2] > 200 and up[17, 5, 0] < 50
    assert D.read_image(tmp_path / "r.jpg", exif_transpose=False).shape == (10, 20, 3)
    assert D.image_size(tmp_path / "r.jpg") == (20, 10)
    assert D.image_size(tmp_path / "r.jpg", exif_transpose=False) == (10, 20)
    # custom datasets use the upright image (phone photos)
    (tmp_path / "l.csv").write_text("image,labels\nr.jpg,cat\n")
    assert D.CustomDataset(tmp_path, tmp_path / "l.csv")[0]["image"].shape == (20, 10, 3)


# --------------------------------------------------------------------------------------------
# unreadable files


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_truncated_and_corrupt_images_raise_clear_errors(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(D.ImageReadError, match=r"trunc\.jpg.*truncated.*remove it from the split"):
        D.read_image(tmp_path / "trunc.jpg")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 7).save(buf, format="PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:-30])
    with pytest.raises(D.ImageReadError, match=r"trunc\.png"):
        D.read_image(tmp_path / "trunc.png")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(D.ImageReadError, match=r"junk\.jpg.*not an image"):
        D.read_image(tmp_path / "junk.jpg")
    with pytest.raises(D.ImageReadError, match=r"gone\.jpg does not exist"):
        D.read_image(tmp_path / "gone.jpg")
    assert issubclass(D.ImageReadError, ValueError)


def test_unreadable_image_in_dataset_and_skip_counter(tmp_path: Path, caplog) -> None:
    (tmp_path / "ok.png").write_bytes(_png_ok())
    data = _jpeg_bytes()
    (tmp_path / "bad.jpg").write_bytes(data[:200])
    (tmp_path / "l.csv").write_text("image,labels\nok.png,cat\nbad.jpg,dog\n")
    ds = D.CustomDataset(tmp_path, tmp_path / "l.csv")
    skips = D.SkipCounter("images")
    done = []
    with caplog.at_level(logging.WARNING, logger="sipe.data"):
        for i in range(len(ds)):  # the pattern a long loop (IS-CAM generation) uses
            try:
                done.append(ds[i]["name"])
            except D.ImageReadError as err:
                assert "bad.jpg" in str(err)
                skips.add(ds.names[i], "unreadable", str(err))
        skips.log(total=len(ds))
    assert done == ["ok"] and skips.names == ["bad"]
    assert skips.summary(len(ds)) == "skipped 1 of 2 images: 1 unreadable"
    assert "skipped 1 of 2 images: 1 unreadable" in caplog.text and "skipping bad (unreadable)" in caplog.text


def _png_ok(h: int = 20, w: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_skip_counter_lists_first_few_then_counts(caplog) -> None:
    s = D.SkipCounter("images", show=2)
    with caplog.at_level(logging.WARNING, logger="sipe.data"):
        for i in range(5):
            s.add(f"im{i}", "no labels" if i % 2 else "unreadable")
    assert len(s) == 5 and s.by_reason() == {"unreadable": 3, "no labels": 2}
    assert s.summary() == "skipped 5 images: 2 no labels, 3 unreadable"
    assert "im1" in caplog.text and "im3" not in caplog.text and "counted, not listed" in caplog.text
    other = D.SkipCounter()
    other.add("x", "unreadable")
    s.extend(other)
    assert len(s) == 6


def test_write_skipped_lists_the_datasets_drops_once_and_reads_back(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sipe.data.skiplist import read_skipped, write_skipped

    train, mean = SimpleNamespace(skipped=D.SkipCounter()), SimpleNamespace(skipped=D.SkipCounter())
    train.skipped.add("a", "no labels")
    mean.skipped.add("a", "no labels")  # an image of both splits
    mean.skipped.add("b", "smaller than 16 px", "b.jpg is 8x8", path="x/b.jpg")
    own = D.SkipCounter()
    own.add("c", "unreadable", "truncated\tfile\nat byte 200")
    path = write_skipped(tmp_path / "out", own, datasets=[train, mean, None])
    assert path == tmp_path / "out" / D.SKIPPED_FILE
    lines = path.read_text().splitlines()
    assert lines == ["name\tpath\treason\tdetail", "a\t\tno labels\t", "b\tx/b.jpg\tsmaller than 16 px\tb.jpg is 8x8",
                     "c\t\tunreadable\ttruncated file at byte 200"]
    # Under torchrun every rank writes its own file; the datasets' drops are listed by rank 0 only.
    rank1 = write_skipped(tmp_path / "ddp", own, datasets=[train], rank=1, world=2)
    write_skipped(tmp_path / "ddp", datasets=[train], rank=0, world=2)
    assert rank1.name == "skipped_rank1.tsv" and rank1.read_text().count("\n") == 2
    listed, files = read_skipped(tmp_path / "ddp")
    assert listed == {"a": "no labels", "c": "unreadable"} and [f.name for f in files] == [
        "skipped_rank0.tsv", "skipped_rank1.tsv"]
    assert read_skipped(tmp_path / "out" / "is_cam")[0] == {"a": "no labels", "b": "smaller than 16 px",
                                                            "c": "unreadable"}  # sipe cam: the parent's list


# --------------------------------------------------------------------------------------------
# masks


def test_masks_palette_indices_and_bad_masks(tmp_path: Path) -> None:
    m = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    save_label_png(tmp_path / "m.png", m)
    assert np.array_equal(D.read_mask(tmp_path / "m.png"), m)  # indices, not palette colours
    # RGB masks are read through the VOC palette (one reader for masks, pseudo labels, predictions).
    Image.fromarray(voc_palette()[m]).save(tmp_path / "rgb.png")
    assert np.array_equal(D.read_mask(tmp_path / "rgb.png"), m)
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(tmp_path / "rgb7.png")
    with pytest.raises(D.ImageReadError, match=r"rgb7\.png holds colour \[7, 7, 7\] .*palette.*class indices"):
        D.read_mask(tmp_path / "rgb7.png")
    Image.fromarray(np.zeros((2, 3, 2), np.uint8), mode="LA").save(tmp_path / "la.png")
    with pytest.raises(D.ImageReadError, match=r"la\.png is a LA image; save labels as palette"):
        D.read_mask(tmp_path / "la.png")
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "m16.png")
    with pytest.raises(D.ImageReadError, match=r"m16\.png has values in \[0, 300\]"):
        D.read_mask(tmp_path / "m16.png")
    Image.fromarray(np.array([[0, 255, 7]], np.uint16)).save(tmp_path / "ok16.png")
    assert D.read_mask(tmp_path / "ok16.png").tolist() == [[0, 255, 7]]


def test_missing_masks_and_mask_size_mismatch(tmp_path: Path, caplog) -> None:
    (tmp_path / "a.png").write_bytes(_png_ok(20, 20))
    (tmp_path / "b.png").write_bytes(_png_ok(20, 20))
    (tmp_path / "l.csv").write_text("image,labels\na.png,cat\nb.png,cat\n")
    masks = tmp_path / "masks"
    save_label_png(masks / "a.png", np.zeros((10, 20), np.uint8))
    with caplog.at_level("WARNING"):
        ds = D.CustomDataset(tmp_path, tmp_path / "l.csv", mask_dir=masks)
    assert "1 of 2 images have no mask in" in caplog.text and caplog.text.rstrip().endswith(": b")
    assert ds[1]["mask"] is None and ds.missing_masks() == ["b"]
    with pytest.raises(D.MissingMaskError, match=r"1 of 2 images .* no ground-truth mask: b\. Add <name>\.png"):
        ds.require_masks()
    with pytest.raises(D.DatasetError, match=r"masks/a\.png is 10x20 but image .*a\.png is 20x20"):
        ds[0]
    plain = D.CustomDataset(tmp_path, tmp_path / "l.csv")
    with pytest.raises(D.MissingMaskError, match="Pass mask_dir="):
        plain.require_masks()
    with pytest.raises(D.DatasetRootError, match=r"mask folder .*nomasks does not exist"):
        D.CustomDataset(tmp_path, tmp_path / "l.csv", mask_dir=tmp_path / "nomasks")


# --------------------------------------------------------------------------------------------
# small images


def test_images_smaller_than_the_stride(tmp_path: Path) -> None:
    D.check_min_size(np.zeros((16, 40, 3), np.uint8), 16)
    with pytest.raises(D.ImageTooSmallError, match=r"tiny\.png is 8x40 pixels, smaller than the minimum 16"):
        D.check_min_size((8, 40), 16, name="tiny.png")
    (tmp_path / "big.png").write_bytes(_png_ok(32, 32))
    (tmp_path / "tiny.png").write_bytes(_png_ok(8, 40))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "l.csv").write_text("image,labels\nbig.png,cat\ntiny.png,cat\nbroken.png,dog\n")
    ds = D.CustomDataset(tmp_path, tmp_path / "l.csv")
    assert ds.drop_small(16) == 2
    assert ds.names == ["big"]
    assert ds.skipped.by_reason() == {"smaller than 16 px": 1, "unreadable": 1}
    assert D.image_size(ds.image_paths[0]) == (32, 32)
    # a tiny image still trains: the transform scales and pads it to the crop
    out = D.random_resize_flip_crop(
        np.zeros((3, 5, 3), np.uint8), np.random.default_rng(0), resize_long=(32, 32), crop_size=32
    )
    assert out["image"].shape == (3, 32, 32) and out["valid"].sum() == 32 * round(3 * 32 / 5)
    only_tiny = D.CustomDataset(tmp_path, tmp_path / "l.csv").subset([1])
    with pytest.raises(D.EmptySplitError, match="smaller than 16 px"):
        only_tiny.drop_small(16)


# --------------------------------------------------------------------------------------------
# labels


def test_images_without_labels(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png_ok())
    (tmp_path / "b.png").write_bytes(_png_ok())
    (tmp_path / "l.csv").write_text("image,labels\na.png,\nb.png,cat\n")
    ds = D.CustomDataset(tmp_path, tmp_path / "l.csv", skip_unlabeled=True)
    assert ds.names == ["b"] and ds.skipped.by_reason() == {"no labels": 1}
    (tmp_path / "none.csv").write_text("image,labels\na.png,\n")
    with pytest.raises(D.DatasetError, match=r"none\.csv names no class at all"):
        D.CustomDataset(tmp_path, tmp_path / "none.csv")
    with pytest.raises(D.EmptySplitError, match=r"all 1 images of labels file .*none\.csv have no labels"):
        D.CustomDataset(tmp_path, tmp_path / "none.csv", class_names=["cat"], skip_unlabeled=True)


def test_unknown_classes_name_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png_ok())
    (tmp_path / "b.png").write_bytes(_png_ok())
    (tmp_path / "l.csv").write_text("image,labels\na.png,cat\nb.png,cat;dgo\n")
    with pytest.raises(D.UnknownClassError, match=r"l\.csv line 3 names class 'dgo'.*\(cat, dog\)"):
        D.CustomDataset(tmp_path, tmp_path / "l.csv", class_names=["cat", "dog"])
    (tmp_path / "l.json").write_text(json.dumps({"a.png": ["cat"], "b.png": ["cow"]}))
    with pytest.raises(D.UnknownClassError, match=r"l\.json key 'b\.png' names class 'cow'"):
        D.CustomDataset(tmp_path, tmp_path / "l.json", class_names=["cat"])
    (tmp_path / "bg.csv").write_text("image,labels\na.png,background;cat\n")
    with pytest.raises(D.DatasetError, match=r"bg\.csv line 2 lists 'background'"):
        D.CustomDataset(tmp_path, tmp_path / "bg.csv")


def test_voc_unknown_class_and_missing_annotation(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "Annotations"):
        (root / d).mkdir(parents=True)
    for n in ("x1", "x2"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "JPEGImages" / f"{n}.jpg")
    (root / "Annotations" / "x1.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    (root / "s1.txt").write_text("x1\n")
    with pytest.raises(D.UnknownClassError, match=r"Annotations/x1\.xml names class 'unicorn'.*class_names="):
        D.VOCDataset(root, root / "s1.txt", cache_dir=tmp_path / "c")
    (root / "s2.txt").write_text("x2\n")
    with pytest.raises(D.DatasetError, match=r"missing from .*Annotations: x2\.xml"):
        D.VOCDataset(root, root / "s2.txt", cache_dir=tmp_path / "c")
    (root / "Annotations" / "x2.xml").write_text("<annotation><object>")
    with pytest.raises(D.DatasetError, match=r"cannot parse annotation .*x2\.xml"):
        D.VOCDataset(root, root / "s2.txt", cache_dir=tmp_path / "c")
    (root / "Annotations" / "x2.xml").write_text("<annotation><filename>x2.jpg</filename></annotation>")
    with pytest.raises(D.EmptySplitError, match=r"all 1 images of VOC split .*s2\.txt have no labels"):
        D.VOCDataset(root, root / "s2.txt", cache_dir=tmp_path / "c", skip_unlabeled=True)
    ds = D.VOCDataset(root, root / "s2.txt", cache_dir=tmp_path / "c")  # kept by default: a negative
    assert len(ds) == 1 and ds[0]["labels"].sum() == 0
    (root / "s3.txt").write_text("x1\nx9\n")
    with pytest.raises(D.DatasetError, match=r"1 images of .*s3\.txt are missing from .*JPEGImages: x9"):
        D.VOCDataset(root, root / "s3.txt", cache_dir=tmp_path / "c")


def test_labels_file_format_errors(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png_ok())
    cases = {
        "nohead.csv": ("a.png,cat\n", r"nohead\.csv line 1 must be the header 'image,labels'"),
        "cols.csv": ("image,labels\na.png,cat,dog\n", r"cols\.csv line 2 has 3 columns; separate classes with ';'"),
        "dup.csv": ("image,labels\na.png,cat\na.png,dog\n", r"dup\.csv line 3 repeats image 'a\.png'"),
        "gone.csv": ("image,labels\nmissing.png,cat\n", r"images named in .*gone\.csv do not exist: .*missing\.png"),
        "bad.json": ("{not json", r"cannot parse labels file .*bad\.json"),
        "list.json": (json.dumps({"a.png": "cat", "b": 3}), r"list\.json key 'b': labels must be a list"),
        "labels.yaml": ("a: b", r"must end in \.csv, \.tsv or \.json"),
        "up.csv": ("image,labels\n../a.png,cat\n", r"up\.csv line 2: image path '\.\./a\.png' must be relative"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(D.DatasetError, match=pattern):
            D.CustomDataset(tmp_path, tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"labels file .*nofile\.csv does not exist"):
        D.CustomDataset(tmp_path, tmp_path / "nofile.csv")


# --------------------------------------------------------------------------------------------
# empty splits, missing roots


def test_empty_split(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "Annotations"):
        (root / d).mkdir(parents=True)
    (root / "empty.txt").write_text("\n# nothing here\n")
    with pytest.raises(D.EmptySplitError, match=r"VOC split .*empty\.txt lists no images"):
        D.VOCDataset(root, root / "empty.txt", cache_dir=tmp_path / "c")
    (tmp_path / "e.csv").write_text("image,labels\n")
    with pytest.raises(D.EmptySplitError, match=r"labels file .*e\.csv lists no images"):
        D.CustomDataset(tmp_path, tmp_path / "e.csv")


def test_dataset_roots_that_do_not_exist(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    with pytest.raises(D.DatasetRootError, match=r"VOC dataset root .*nowhere does not exist.*VOCdevkit/VOC2012"):
        D.VOCDataset(nowhere, "train")
    with pytest.raises(D.DatasetRootError, match=r"COCO dataset root .*nowhere does not exist.*train2014"):
        D.COCODataset(nowhere, "val")
    with pytest.raises(D.DatasetRootError, match=r"image folder .*nowhere does not exist"):
        D.CustomDataset(nowhere, tmp_path / "l.csv")
    with pytest.raises(D.DatasetRootError, match=r"synthetic dataset root .*nowhere.*generate_synthetic"):
        D.SyntheticDataset(nowhere, "train")
    with pytest.raises(D.DatasetRootError, match=r"JPEGImages does not exist.*not in the VOC layout"):
        D.VOCDataset(tmp_path, "train")  # exists, but is not a VOC root
    (tmp_path / "val2014").mkdir()
    with pytest.raises(D.DatasetRootError, match=r"instances_val2014\.json does not exist"):
        D.COCODataset(tmp_path, "val")
    assert issubclass(D.DatasetRootError, FileNotFoundError)


def test_a_stage_narrows_its_copy_of_a_dataset_not_the_callers(tmp_path):
    """SegDataset.copy: train_irn and train_seg drop images from their own copy (issue 25: no stage changes an
    object another stage reads)."""
    from PIL import Image

    from sipe.data.custom import CustomDataset
    from sipe.refine.train_irn import usable_images

    for i in range(3):
        Image.new("RGB", (40, 40), (40 * i, 90, 120)).save(tmp_path / f"im{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "labels.csv").write_text("image,labels\nim0.png,cat\nim1.png,dog\nim2.png,cat\nbad.png,dog\n")
    ds = CustomDataset(tmp_path, tmp_path / "labels.csv")
    usable = usable_images(ds)
    assert usable.names == ["im0", "im1", "im2"] and usable.skipped.names == ["bad"]
    assert len(ds) == 4 and ds.skipped.names == []  # the caller's dataset and list as they were
    own = ds.copy()
    own.drop_small(16)
    assert len(own) == 3 and len(ds) == 4 and not len(ds.skipped)
