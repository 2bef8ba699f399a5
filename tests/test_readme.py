"""The README's Python snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sipe.models import build_sipe

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    predictor_code, code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    ckpt = tmp_path / "final.pt"
    names = ["background", "cat", "dog", "sofa"]
    torch.save({"model": build_sipe("resnet18", num_classes=4, weights=None).state_dict(),
                "meta": {"class_names": names}}, ckpt)
    scope = {"CHECKPOINT": ckpt}
    exec(compile(predictor_code, str(README), "exec"), scope)  # noqa: S102 - the README's own code
    result, tagged = scope["result"], scope["tagged"]
    assert result.mask.shape == (120, 160) and result.class_names == names and result.scores.shape == (3,)
    assert len(tagged) == 2 and tagged[0].labels == ["cat"] and set(tagged[0].mask.ravel().tolist()) <= {0, 1}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102
    h, w = scope["image"].shape[:2]
    assert scope["mask"].shape == (h, w) and scope["keys"][0] == 0
    assert scope["maps"].shape == (len(scope["keys"]), h, w)
    assert torch.isfinite(scope["loss"]) and scope["model"].classifier.weight.grad is not None
