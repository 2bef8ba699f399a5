"""``sipe report``: the results page of a run folder, its numbers, its embedded pictures, in a real browser."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipe import io as sio
from sipe.cli import main
from sipe.data.cam_format import write_cam_file
from sipe.report import collect_run, write_report_html

SECTIONS = ("summary", "per-class", "sweep", "training", "images", "confusion")
MB = 1_000_000


# ---------------------------------------------------------------------- a fake run of "your own photos"
def _fake_run(root: Path, n: int = 12, hw: tuple[int, int] = (375, 500), masks: bool = True) -> dict[str, Path]:
    """n VOC-sized photos (smooth colour noise, which JPEG compresses about as badly as photos) of a
    custom dataset, with CAM / IS-CAM files, pseudo masks and a TensorBoard log; masks optional."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    photos, run = root / "photos", root / "run"
    h, w = hw
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    lines = ["image,labels"]
    for i in range(n):
        name = f"img_{i:02d}"
        coarse = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        sio.save_image(photos / f"{name}.jpg", image)
        mask = np.zeros((h, w), np.uint8)
        mask[(yy - 0.35) ** 2 + (xx - 0.4) ** 2 < 0.04] = 1
        mask[(yy - 0.4) ** 2 + (xx - 0.8) ** 2 < 0.02] = 2
        lines.append(f"{name}.jpg,cat;dog")
        if masks:
            sio.save_label_png(photos / "masks" / f"{name}.png", mask)
        # IS-CAMs shifted more and more to the right: image i's IoU falls with i.
        shifted = np.roll(mask, 12 * i, axis=1)
        fg = np.stack([(shifted == c).astype(np.float32) for c in (1, 2)])
        write_cam_file(run / "cams_val" / "cam" / f"{name}.npz", np.array([1, 2]), fg * 0.9, kind="cam")
        write_cam_file(run / "cams_val" / "is_cam" / f"{name}.npz", np.array([0, 1, 2]),
                       np.concatenate([1 - fg.max(0, keepdims=True), fg]), kind="is_cam")
        sio.save_label_png(run / "pseudo_val" / f"{name}.png", shifted)
    sio.write_text(photos / "labels.csv", "\n".join(lines) + "\n")
    writer = SummaryWriter(str(run / "train" / "tb"))
    for step in range(1, 6):
        writer.add_scalar("train/loss_cls", 1.0 / step, step)
        writer.add_scalar("train/loss_gsc", 0.5 / step, step)
        writer.add_scalar("train/lr", 0.1 * (1 - step / 6), step)
    writer.close()
    return {"photos": photos, "run": run, "labels": photos / "labels.csv", "masks": photos / "masks"}


def _img_srcs(html: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)


def _decode(uri: str) -> Image.Image:
    head, data = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _assert_self_contained(html: str) -> None:
    srcs = _img_srcs(html)
    assert srcs and all(s.startswith("data:image/") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert html.count("<img") == len(srcs)  # every <img> has a src we checked
    assert not re.search(r"(src|href)=\"(?!data:|#)", html)  # no relative or remote resources
    assert "http://" not in html and "https://" not in html and "<link" not in html and "url(" not in html


# ---------------------------------------------------------------------- the tiny demo run
@pytest.mark.slow
def test_demo_report_has_every_section_with_the_runs_numbers(tiny_demo):
    _, out, _ = tiny_demo
    page = out / "report.html"
    assert page.is_file()  # written by the demo itself
    html = page.read_text(encoding="utf-8")
    metrics = json.loads((out / "metrics.json").read_text())
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    # The mIoU table equals metrics.json (the raw value and the percentage shown).
    stages = dict(re.findall(r'<tr data-stage="(\w+)".*?data-value="([^"]+)"', html, flags=re.S))
    wanted = {"cam": "cam_miou", "is_cam": "is_cam_miou", "pseudo_labels": "pseudo_label_miou", "seg": "seg_miou"}
    assert set(stages) == set(wanted)
    for stage, key in wanted.items():
        assert float(stages[stage]) == metrics[key], stage
        assert re.search(rf'data-value="{re.escape(stages[stage])}">{100 * metrics[key]:.2f}</td>', html)
    assert f"CAM (best background threshold {metrics['cam_threshold']:.2f})" in html
    for stage, sec in metrics["seconds"].items():  # wall times
        assert f"<td>{stage}</td><td class=\"num\">{sec}</td>" in html, stage
    info = json.loads((out / "run_info.json").read_text())
    assert info["git_commit"] in html and "config.yaml (" in html
    # Training curves of every stage that ran, the image grid with all five kinds of picture.
    for title in ("classifier pretraining", "SIPE training", "IRN", "DeepLabV3"):
        assert f"<h3>{title} <span" in html, title
    assert html.count('<div class="imgrow"') == 3  # 3 held-out images < 12
    for caption in ("<figcaption>image</figcaption>", "<figcaption>pseudo mask</figcaption>",
                    "<figcaption>segmentation</figcaption>", "<figcaption>ground truth</figcaption>"):
        assert html.count(caption) == 3, caption
    assert html.count("<figcaption>CAM ") >= 3 and html.count("<figcaption>IS-CAM ") >= 3
    assert 'class="legend"' in html and "No ground-truth masks" not in html
    _assert_self_contained(html)
    assert len(html.encode()) < 5 * MB


@pytest.mark.slow
def test_demo_report_cli_rebuilds_the_same_page(tiny_demo, tmp_path, capsys):
    _, out, _ = tiny_demo
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    assert "file://" in capsys.readouterr().out
    assert (tmp_path / "r.html").read_text() == (out / "report.html").read_text()


# ---------------------------------------------------------------------- your own photos, 12 VOC-sized images
def test_twelve_large_images_best_median_worst_thumbnails_and_size(tmp_path):
    from sipe.data import build_dataset

    f = _fake_run(tmp_path, n=15)
    ds = build_dataset("custom", f["photos"], f["labels"], mask_dir=f["masks"])
    page = write_report_html(f["run"], dataset=ds, progress=False)
    html = page.read_text()
    assert page == f["run"] / "report.html"
    rows = re.findall(r'<div class="imgrow" data-name="(img_\d+)">.*?<span class="group-(\w+)">', html, flags=re.S)
    # IoU falls with the index: the 4 best, the 4 around the median (of 15), the 4 worst.
    assert rows == [(f"img_{i:02d}", g) for g, idx in (("best", range(4)), ("median", range(5, 9)),
                                                        ("worst", range(11, 15))) for i in idx]
    grid = html[html.index('<section id="images">'):html.index('<section id="confusion">')]
    thumbs = _img_srcs(grid)
    assert len(thumbs) == 12 * 7  # image, CAM x2, IS-CAM x2, pseudo mask, ground truth (no segmentation)
    assert all(_decode(uri).size == (256, 192) for uri in thumbs)  # 500x375 -> long side 256
    _assert_self_contained(html)
    assert len(html.encode()) < 5 * MB
    # The ranking printed is the per-image IS-CAM IoU: image 0's IS-CAM is its mask, IoU 1.
    assert "img_00<br><span class=\"group-best\">best</span><br>IS-CAM IoU 1.000" in html


def test_report_without_masks_renders_and_says_so(tmp_path, capsys):
    f = _fake_run(tmp_path, n=14, hw=(120, 160), masks=False)
    out = tmp_path / "page.html"
    code = main(["report", str(f["run"]), "--out", str(out), "--dataset", "custom", "--root", str(f["photos"]),
                 "--split", str(f["labels"])])
    assert code == 0, capsys.readouterr().err
    html = out.read_text()
    assert 'id="no-masks"' in html and "No ground-truth masks were given." in html
    assert "<code>data.mask_dir=...</code>" in html  # the way to add them in sipe run, too
    assert 'id="miou-table"' not in html and "ground truth</figcaption>" not in html
    names = re.findall(r'<div class="imgrow" data-name="(img_\d+)">', html)
    assert names == [f"img_{i:02d}" for i in range(12)]  # unranked: the first 12
    assert "<h3>SIPE training <span" in html and 'class="group-best"' not in html
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    _assert_self_contained(html)


def test_report_command_line_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--dataset", "custom"]) == 2
    assert "add --root, --split" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{broken")
    assert main(["report", str(tmp_path)]) == 1
    assert "metrics.json" in capsys.readouterr().err


def test_collect_reads_every_tensorboard_point(tmp_path, caplog):
    f = _fake_run(tmp_path, n=1, hw=(40, 48))
    with caplog.at_level(logging.INFO):
        contents = collect_run(f["run"])
    # tensorboard's reader says "No path found after <file>" at INFO for each file: kept out of the run's log
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("tensorboard")]
    assert logging.getLogger("tensorboard").level == logging.NOTSET
    steps, values = contents.curves["train"].scalars["train/loss_cls"]
    assert steps == [1, 2, 3, 4, 5] and values == pytest.approx([1 / s for s in steps])
    assert contents.dataset is None and contents.cam_dir == f["run"] / "cams_val"


# ---------------------------------------------------------------------- in a real browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window && t.tagName ? "failed to load " + t.tagName : "uncaught: " + e.message);
}, true);
var __consoleError = console.error;
console.error = function () { window.__errors.push("console.error: " + Array.from(arguments).join(" "));
                              __consoleError.apply(console, arguments); };
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var p = document.createElement("pre"); p.id = "__probe";
  p.textContent = JSON.stringify({errors: window.__errors, images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length,
    height: document.documentElement.scrollHeight});
  document.body.appendChild(p);
});
</script>"""


def _browser(binary: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def browser_check(page: Path, work: Path, inject: str = "") -> tuple[dict, Image.Image, str]:
    """Open ``page`` (file://) in headless Chromium: the probe's findings (errors, images, broken
    images, page height), a full-page screenshot and the browser's log."""
    binary = _chromium()
    html = page.read_text(encoding="utf-8")
    # The probe runs first in <head>, so that it sees every later error (scripts, images).
    probed = page.with_name(f"probe_{page.name}")
    probed.write_text(html.replace("<head>", "<head>\n" + _PROBE + inject, 1), encoding="utf-8")
    dom = _browser(binary, probed, work / "profile1", "--dump-dom", "--virtual-time-budget=10000")
    match = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, flags=re.S)
    assert match, f"the probe did not report; chromium said: {dom.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    shot = work / "shot.png"
    height = min(max(int(probe["height"]), 600), 16000)
    target = probed if inject else page
    res = _browser(binary, target, work / "profile2", f"--screenshot={shot}", f"--window-size=1280,{height}",
                   "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
    assert shot.is_file(), f"no screenshot; chromium said: {res.stderr[-2000:]}"
    return probe, Image.open(shot).convert("RGB"), res.stderr


def _console_errors(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "rror" in ln)]


def _assert_clean_render(probe: dict, shot: Image.Image, log: str, min_images: int) -> None:
    assert probe["errors"] == [] and not _console_errors(log), (probe["errors"], _console_errors(log))
    assert probe["images"] >= min_images and probe["broken"] == 0, probe
    arr = np.asarray(shot)
    assert shot.size[1] >= min(probe["height"], 16000) - 1  # the whole page
    # Non-blank: many colours and far from one flat background.
    assert arr.std() > 20 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 200
    assert (np.abs(arr.astype(int) - arr[0, 0]).sum(-1) > 30).mean() > 0.05


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (.ci/run installs "
                                                                    "Debian's chromium package); browser check skipped")


@needs_chromium
@pytest.mark.slow
def test_demo_report_in_a_real_browser(tiny_demo, tmp_path):
    _, out, _ = tiny_demo
    probe, shot, log = browser_check(out / "report.html", tmp_path)
    # 4 plots of the training stages, per-class IoU + P/R, sweep, confusion, 3 rows of >= 6 pictures
    _assert_clean_render(probe, shot, log, min_images=8 + 3 * 6)


@needs_chromium
def test_report_without_masks_in_a_real_browser(tmp_path):
    from sipe.data import build_dataset

    f = _fake_run(tmp_path, n=3, hw=(120, 160), masks=False)
    ds = build_dataset("custom", f["photos"], f["labels"])
    page = write_report_html(f["run"], dataset=ds, progress=False)
    probe, shot, log = browser_check(page, tmp_path)
    _assert_clean_render(probe, shot, log, min_images=1 + 3 * 6)


@needs_chromium
def test_browser_check_catches_a_script_error_and_a_missing_image(tmp_path):
    f = _fake_run(tmp_path, n=1, hw=(40, 48), masks=False)
    page = write_report_html(f["run"], progress=False)
    probe, _, log = browser_check(page, tmp_path, inject='<script>noSuchFunction();</script>')
    assert any("noSuchFunction" in e for e in probe["errors"]) and _console_errors(log)
    html = page.read_text().replace("</main>", '<img src="missing.png"></main>')
    page.write_text(html)
    probe, _, _ = browser_check(page, tmp_path / "again")
    assert probe["broken"] == 1 and "failed to load IMG" in probe["errors"]


def test_degenerate_results_are_flagged_in_words(tmp_path):
    """All-background masks, a class never predicted, too few training images, and a segmentation network
    that loses to its own pseudo labels (which output to use, by how much, per class)."""
    from sipe.report.collect import RunContents
    from sipe.report.flags import degenerate_flags

    def rep(ious, pred, split="val"):
        classes = [{"name": n, "iou": i, "pred_pixels": p, "gt_pixels": 10}
                   for n, i, p in zip(["background", "cat", "dog"], ious, pred, strict=True)]
        return {"miou": sum(ious) / 3, "classes": classes, "split": split, "num_images": 4}

    contents = RunContents(run_dir=tmp_path, metrics={"train_images_per_class": {"cat": 12, "dog": 3}}, evals={
        "is_cam": rep([0.5, 0.0, 0.0], [100, 0, 0]),
        "pseudo_labels": rep([0.8, 0.6, 0.5], [50, 30, 20]),
        "seg": rep([0.8, 0.3, 0.0], [80, 20, 0]),
    })
    flags = degenerate_flags(contents)
    assert flags[0].startswith("IS-CAM: every pixel of every evaluated image is background")
    assert flags[1] == "segmentation: never predicts dog (1 of 2 classes), although the ground truth has them."
    assert flags[2].startswith("Fewer than 5 training images for dog (3)")
    assert "worse than its own pseudo labels" in flags[3] and "mIoU 36.7 vs 63.3 (-26.7 points)" in flags[3]
    assert "use the pseudo masks" in flags[3] and "cat 30.0 vs 60.0 (-30.0); dog 0.0 vs 50.0 (-50.0)" in flags[3]
    assert len(flags) == 4
    # Less than a point below its labels is noise, not a decision: no flag.
    seg_miou = contents.evals["seg"]["miou"]
    contents.evals["seg"]["miou"] = contents.evals["pseudo_labels"]["miou"] - 0.009
    assert not any("pseudo labels" in f for f in degenerate_flags(contents))
    contents.evals["seg"]["miou"] = contents.evals["pseudo_labels"]["miou"] - 0.011
    assert any("-1.1 points" in f for f in degenerate_flags(contents))
    contents.evals["seg"]["miou"] = seg_miou
    # Evaluated on other images, the two are not compared.
    contents.evals["seg"]["split"] = "test"
    assert not any("pseudo labels" in f for f in degenerate_flags(contents))


def test_summary_shows_false_positives_on_negatives(tmp_path):
    """With negatives among the evaluated images, each stage's row says how much foreground it put on them."""
    from sipe.report.builder import _summary
    from sipe.report.collect import RunContents

    classes = [{"name": n, "iou": 0.5, "pred_pixels": 5, "gt_pixels": 10} for n in ("background", "defect")]
    with_neg = {"miou": 0.5, "classes": classes, "num_images": 6,
                "negatives": {"images": 3, "pixels": 300, "fp_pixels": 6, "fp_pixel_rate": 0.02, "images_with_fp": 1}}
    without = {"miou": 0.5, "classes": classes, "num_images": 3,
               "negatives": {"images": 0, "pixels": 0, "fp_pixels": 0, "fp_pixel_rate": None, "images_with_fp": 0}}
    rows = _summary(RunContents(run_dir=tmp_path, evals={"is_cam": with_neg, "seg": without}))
    assert rows[0]["negatives"] == "2.00 % of pixels; 1 of 3 images with any"
    assert rows[1]["negatives"] is None


def test_presence_section_shows_scores_with_and_without_each_tag_and_false_positives_on_negatives(tmp_path):
    """presence.json (the classifier's scores of the training images) -> a histogram per class, a row per
    class (means, false tags, misses) and the false positives on negatives where the model decides
    presence: the classifier's own tags and the segmentation network."""
    from sipe.report.flags import PRESENCE_FILE

    run = tmp_path / "run"
    run.mkdir()
    images = [{"name": f"c{i}", "tags": ["cat"], "scores": [0.9, 0.2]} for i in range(3)]
    images += [{"name": "miss", "tags": ["cat"], "scores": [0.3, 0.1]}]
    images += [{"name": f"n{i}", "tags": [], "scores": [0.1, 0.7 if i < 2 else 0.2]} for i in range(5)]
    sio.write_text(run / PRESENCE_FILE, json.dumps({"class_names": ["cat", "dog"], "score_threshold": 0.5,
                                                    "images_total": 20, "images": images}))
    classes = [{"name": n, "iou": 0.5, "pred_pixels": 10, "gt_pixels": 10} for n in ("background", "cat", "dog")]
    sio.write_text(run / "eval_seg.json", json.dumps({
        "miou": 0.5, "classes": classes, "split": "val", "num_images": 9,
        "negatives": {"images": 4, "images_with_fp": 3, "fp_pixel_rate": 0.125}}))
    html = write_report_html(run, progress=False).read_text()
    section = html[html.index('<section id="presence">'):]
    section = section[:section.index("</section>")]
    assert 'alt="classifier score histograms per class" src="data:image/png;base64,' in section
    cat = re.search(r'<tr data-class="cat">(.*?)</tr>', section, re.S).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', cat) == ["4", "0.750", "5", "0.100", "0", "1"]
    dog = re.search(r'<tr data-class="dog">(.*?)</tr>', section, re.S).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', dog) == ["0", "–", "9", "0.300", "2", "0"]
    assert "name a class on 2 of 5 training images without any tag" in section
    assert "foreground on 3 of 4 evaluation images without any class (12.50 % of their pixels" in section
    assert "of 9 of 20 training images" in section
    # without presence.json there is no section
    (run / PRESENCE_FILE).unlink()
    assert '<section id="presence">' not in write_report_html(run, progress=False).read_text()


def test_confusion_matrix_is_the_final_models_and_the_earlier_stages_fold_away(tmp_path):
    run = tmp_path / "run"
    classes = [{"name": n, "iou": 0.5, "precision": 0.5, "recall": 0.5, "pred_pixels": 10, "gt_pixels": 10}
               for n in ("background", "cat")]
    # IS-CAM scores best, but the page's matrix is the segmentation network's: the model a user keeps
    for file, miou in (("eval_cam.json", 0.4), ("eval_is_cam.json", 0.7), ("eval_seg.json", 0.6)):
        sio.write_text(run / file, json.dumps({"miou": miou, "classes": classes, "split": "val", "num_images": 2,
                                               "confusion_matrix": [[5, 1], [2, 4]]}))
    html = write_report_html(run, progress=False).read_text()
    section = html[html.index('<section id="confusion">'):]
    assert "The final model's: segmentation; the earlier stages' below." in section
    assert re.findall(r'<details class="confusion-other"><summary>([^<]+)</summary>', section) == ["IS-CAM", "CAM"]
    assert section.index('alt="confusion matrix of segmentation"') < section.index("<details")
    (run / "eval_seg.json").unlink()  # without the segmentation network: the pseudo-label-free pipeline's last
    section = write_report_html(run, progress=False).read_text().split('<section id="confusion">')[1]
    assert "The final model's: IS-CAM;" in section


def test_a_run_from_random_weights_says_so_in_its_run_table(tmp_path):
    run = tmp_path / "run"
    sio.write_text(run / "run_info.json", json.dumps({"sipe_version": "0", "random_weights": ["train.model", "irn"]}))
    html = write_report_html(run, progress=False).read_text()
    assert "<tr><th>random weights</th><td>train.model, irn (weights: null): no pretrained backbone</td></tr>" in html
    sio.write_text(run / "run_info.json", json.dumps({"sipe_version": "0"}))
    assert "random weights</th>" not in write_report_html(run, progress=False).read_text()


def test_the_plan_section_shows_the_fingerprint_and_each_derived_setting_with_its_rule(tmp_path):
    from sipe.report.builder import render_report
    from sipe.report.collect import RunContents
    from sipe.run.config import RunConfig
    from sipe.run.plan import derive_plan, fingerprint_of, plan_record

    labels = np.zeros((50, 2), bool)
    labels[:40, 0] = labels[40:45, 1] = True  # cat in 40 images, dog in 5, 5 negatives
    fp = fingerprint_of(labels, [(120, 160)] * 50, ["cat", "dog"])
    _, rules = derive_plan(RunConfig(), fp)
    html = render_report(RunContents(run_dir=tmp_path, metrics={"plan": plan_record(fp, rules, applied=True)}),
                         num_images=0, progress=False)
    section = html[html.index('<section id="plan">'):]
    section = section[: section.index("</section>")]
    assert "50 training images (5 without a class), median size 120x160 px; imbalance 8.0" in section
    assert "<td>dog</td><td class=\"num\">5</td>" in section
    assert "<code>seg.loss_weighting</code></td><td><code>inverse_sqrt_frequency</code>" in section
    assert "imbalance 8.0 &gt;= 4: a rare class&#39;s pixels weigh more" in section and "Applied" in section
    assert "<code>seg.model.freeze_bn</code></td><td><code>true</code>" in section  # as the YAML writes it
    off = render_report(RunContents(run_dir=tmp_path, metrics={"plan": plan_record(fp, rules, applied=False)}),
                        num_images=0, progress=False)
    assert "Not applied (plan=false)" in off
    assert '<section id="plan">' not in render_report(RunContents(run_dir=tmp_path, metrics={}), num_images=0,
                                                      progress=False)
