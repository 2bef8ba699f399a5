"""A misspelled class in the labels file stops before training (exit 1, one line, torch not loaded);
an explicit class list is obeyed as given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipe.data import CustomDataset, LikelyTypoError, UnknownClassError
from sipe.data.custom import check_class_typos

REPO = Path(__file__).resolve().parents[1]


def _rows(*labels: str) -> list[tuple[str, list[str], str]]:
    return [(f"i{k}.jpg", [c for c in cell.split(";") if c], f"labels.csv line {k + 2}")
            for k, cell in enumerate(labels)]


def _folder(root: Path, labels: list[str]) -> Path:
    root.mkdir()
    rows = ["image,labels"]
    for k, cell in enumerate(labels):
        Image.fromarray(np.full((20, 20, 3), 9 * k, np.uint8)).save(root / f"i{k}.png")
        rows.append(f"i{k}.png,{cell}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_rare_close_spelling_of_a_common_class_is_refused_naming_both_counts_and_the_row():
    rows = _rows(*["square"] * 15, "sqaure", "circle", "circle;square", "circle", "circle", "circle")
    with pytest.raises(LikelyTypoError) as err:
        check_class_typos(rows)
    assert str(err.value) == (
        "labels.csv line 17: 'sqaure' (1 image) looks like 'square' (16 images): fix the labels file or pass "
        "--class-names / data.class_names"
    )


@pytest.mark.parametrize(("rare", "common"), [("sqaure", "square"), ("sqare", "square"), ("squarre", "square"),
                                              ("Square", "square"), ("bxo", "box"), ("cta", "cat"),
                                              ("potted plnt", "potted plant")])
def test_swaps_insertions_deletions_and_case_count_as_typos(rare, common):
    with pytest.raises(LikelyTypoError, match=f"'{rare}' \\(2 images\\) looks like '{common}' \\(6 images\\)"):
        check_class_typos(_rows(*[common] * 6, rare, rare))


@pytest.mark.parametrize("labels", [
    ["cat"] * 6 + ["dog"],                 # far apart: a real rare class
    ["cat"] * 3 + ["car"],                 # the common one is not common enough (< 5 rows)
    ["car"] * 6 + ["cat"] * 3,             # both named in more than two rows
    ["bus"] * 6 + ["bike"] * 2,            # two edits on short names
])  # fmt: skip
def test_rare_classes_that_are_not_typos_pass(labels):
    check_class_typos(_rows(*labels))


def test_the_dataset_refuses_an_inferred_typo_but_obeys_an_explicit_list(tmp_path):
    root = _folder(tmp_path / "p", ["box"] * 6 + ["ball;bxo"] + ["ball"] * 6)
    with pytest.raises(LikelyTypoError, match="labels.csv line 8: 'bxo' \\(1 image\\) looks like 'box' \\(6 images\\)"):
        CustomDataset(root, root / "labels.csv")
    # An explicit list is obeyed: a name outside it names the file and row ...
    with pytest.raises(UnknownClassError, match="labels.csv line 8 names class 'bxo', which is not in the class list"):
        CustomDataset(root, root / "labels.csv", class_names=["ball", "box"])
    # ... and a list that holds the rare name keeps it as a class of its own.
    ds = CustomDataset(root, root / "labels.csv", class_names=["ball", "box", "bxo"])
    assert ds.class_names == ["background", "ball", "box", "bxo"]
    assert ds.label_matrix[6].tolist() == [1.0, 0.0, 1.0]


_NO_TORCH = ("import sys; from sipe.cli import main; code = main(sys.argv[1:]); "
             "print('torch imported:', 'torch' in sys.modules); sys.exit(code)")


def test_sipe_train_stops_before_torch_with_one_line(tmp_path):
    root = _folder(tmp_path / "p", ["square"] * 6 + ["sqaure"])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = ["train", "--out", str(tmp_path / "run"), "data.kind=custom", f"data.root={root}",
            f"data.split={root / 'labels.csv'}", "data.val_split=null", "model.weights=null"]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"sipe train: error: {root / 'labels.csv'} line 8: 'sqaure' (1 image) looks like 'square' (6 images): fix "
        "the labels file or pass --class-names / data.class_names"]
    assert "torch imported: False" in proc.stdout
    assert not (tmp_path / "run").exists()
