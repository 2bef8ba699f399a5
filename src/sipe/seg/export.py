"""ONNX export of a segmentation network with dynamic batch, height and width.

The exported graph takes ``image``: (N, 3, H, W) float32 RGB in [0, 255], the photo upright after its
EXIF orientation (the network's normalisation is inside the graph, so callers only convert their
decoded pixels). By default it computes what ``sipe predict`` computes: ``probs``, (N, K, H, W) float32
class probabilities at the input size, the softmax of the image and of its mirror image (mirrored
back) averaged (:class:`FlipAveragedProbs`). ``flip=False`` (``sipe export --no-flip``) writes the lean
graph: one pass, output ``logits`` (N, K, H, W). A DeepLabV2 is exported as it is evaluated: its
multi-scale inputs (MSC, scales 1.0 / 0.75 / 0.5 by default) and their max fusion are part of
the graph. The model's metadata holds the class names (``class_names``, a JSON list) and the
preprocessing the graph expects (:func:`preprocessing_metadata`). The traced network is the
architecture's ``onnx_wrapper`` (:mod:`sipe.seg.architectures`).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sipe import io as sio
from sipe.data.transforms import mean_std
from sipe.seg.architectures import onnx_wrapper
from sipe.seg.interface import NormalizedSegModel, input_normalization

__all__ = [
    "FlipAveragedProbs", "NormalizedSegModel", "OnnxCheck", "check_onnx", "compare_onnx", "export_onnx",
    "preprocessing_metadata",
]


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'sipe[export]'") from e
    return onnx


class FlipAveragedProbs(nn.Module):
    """(N, 3, H, W) RGB in [0, 255] -> (N, K, H, W) class probabilities as ``sipe predict`` computes them
    (:func:`sipe.seg.predict.predict_probs` at scale 1 with flip): the softmax of ``net(image)`` and of
    ``net(mirrored image)`` mirrored back, averaged. ``net``: an ``onnx_wrapper`` (raw pixels -> logits)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Two passes rather than one on a doubled batch: the same numbers, without a batch-size-dependent
        # split in the graph.
        direct = self.net(image).float().softmax(1)
        mirrored = self.net(image.flip(-1)).float().softmax(1).flip(-1)
        return (direct + mirrored) / 2


def _graph(model: nn.Module, arch: str | None, flip: bool) -> tuple[nn.Module, str]:
    """The module to trace for ``model`` and its output's name (``probs`` with ``flip``, else ``logits``)."""
    net = onnx_wrapper(model, arch)
    return (FlipAveragedProbs(net), "probs") if flip else (net, "logits")


def preprocessing_metadata(model: nn.Module, flip: bool) -> dict[str, str]:
    """The ONNX metadata entries that say what the graph of ``model`` expects and returns (strings; lists
    as JSON): the image upright after its EXIF orientation (``ImageOps.exif_transpose``), RGB, NCHW
    float32 in [0, 255]; the mean and std (0-255 units) the graph itself subtracts and divides by; whether
    the graph averages with the mirror image (``flip``); the output's name and meaning."""
    mean, std = mean_std(input_normalization(model))
    return {
        "input": "image: (N,3,H,W) float32 RGB in [0,255]",
        "output": ("probs: (N,K,H,W) class probabilities, flip-averaged as sipe predict" if flip
                   else "logits: (N,K,H,W) one pass, no flip"),
        "exif_transpose": "true",
        "color": "RGB",
        "value_range": "[0, 255]",
        "normalization": input_normalization(model),
        "mean": json.dumps([round(m * 255.0, 4) for m in mean]),
        "std": json.dumps([round(v * 255.0, 4) for v in std]),
        "normalized_in_graph": "true",
        "flip": "true" if flip else "false",
        "scales": "[1.0]",
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = 17,
    *,
    sample_size: tuple[int, int] = (128, 128),
    class_names: Sequence[str] | None = None,
    dynamo: bool = False,
    arch: str | None = None,
    flip: bool = True,
) -> Path:
    """Export ``model`` (a segmentation network on normalised input) to ONNX at ``path``, atomically.

    opset: the ONNX opset (17 or later); the written file declares exactly this opset.
    sample_size: (H, W) of the tracing input; any size works at run time.
    dynamo: use the ``torch.export``-based exporter (needs opset >= 18 and ``onnxscript``) instead of
        the TorchScript one, which is the one that writes opset 17.
    arch: the network's architecture (:func:`sipe.seg.architectures.onnx_wrapper`; ``None``: found
        from its class).
    flip: the graph ``sipe predict`` runs (output ``probs``, :class:`FlipAveragedProbs`); ``False``: one
        pass, output ``logits``.
    Returns ``path``.
    """
    onnx = _require_onnx()
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use 17 or later")
    if dynamo and opset < 18:
        raise ValueError("the dynamo exporter writes opset 18 or later; pass opset>=18 or dynamo=False")
    path = Path(path)
    # A CPU copy: exporting must not move the caller's model or change its train/eval mode.
    wrapper, output = _graph(copy.deepcopy(model), arch, flip)
    wrapper = wrapper.cpu().eval()
    sample = torch.rand(1, 3, *sample_size) * 255.0
    with sio.atomic_path(path) as tmp:
        onnx_tmp = tmp.with_suffix(".onnx")
        try:
            common = {"opset_version": opset, "input_names": ["image"], "output_names": [output]}
            if dynamo:
                dim = torch.export.Dim
                shapes = {"image": {0: dim("batch"), 2: dim("height", min=8), 3: dim("width", min=8)}}
                torch.onnx.export(wrapper, (sample,), str(onnx_tmp), dynamo=True, dynamic_shapes=shapes,
                                  external_data=False, **common)
            else:
                axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ("image", output)}
                with warnings.catch_warnings():
                    # The TorchScript exporter is deprecated upstream but is the one that writes opset 17.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    # The normalisation's mean and std (sipe.data.transforms.normalize_tensor) are the same on
                    # every call: graph constants are what they should be, as the tracer's warning allows.
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    torch.onnx.export(wrapper, (sample,), str(onnx_tmp), dynamo=False, dynamic_axes=axes, **common)
            proto = onnx.load(str(onnx_tmp))
        finally:
            if onnx_tmp.exists():
                onnx_tmp.unlink()
        got = {o.domain: o.version for o in proto.opset_import}.get("", None)
        if got != opset:
            raise RuntimeError(f"the exporter wrote opset {got} instead of the requested {opset}")
        meta = {"producer": "sipe", **preprocessing_metadata(model, flip)}
        if class_names:
            meta["class_names"] = json.dumps(list(class_names))
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


@dataclass(frozen=True)
class OnnxCheck:
    """How onnxruntime's output (logits, or the flip-averaged probabilities) compares with PyTorch's
    (:func:`check_onnx`)."""

    max_abs_diff: float  # largest |ONNX - PyTorch| over every output value
    max_abs_logit: float  # largest |PyTorch output value|: the scale the difference is judged against
    argmax_agreement: float  # fraction of the pixels where both pick the same class
    pixels: int
    output: str = "logits"  # the graph's output: "logits" or "probs"

    @property
    def relative_diff(self) -> float:
        """``max_abs_diff / max(1, max_abs_logit)``: float32 rounding grows with the logits' size."""
        return self.max_abs_diff / max(1.0, self.max_abs_logit)

    def problem(self, tol: float = 1e-4, min_agreement: float = 0.999) -> str | None:
        """``None`` when the two agree (relative difference within ``tol`` and the same class on at
        least ``min_agreement`` of the pixels: a near tie may flip), else what differs, in words."""
        if self.relative_diff > tol:
            return (f"differs from PyTorch's by {self.max_abs_diff:.3g}, {self.relative_diff:.3g} of the largest "
                    f"|{self._unit}| {self.max_abs_logit:.3g} (more than {tol:g})")
        if self.argmax_agreement < min_agreement:
            return (f"picks another class than PyTorch on {1 - self.argmax_agreement:.2%} of the pixels "
                    f"(more than {1 - min_agreement:.1%})")
        return None

    @property
    def _unit(self) -> str:
        return "probability" if self.output == "probs" else "logit"

    def summary(self) -> str:
        return (f"max |difference| = {self.max_abs_diff:.3g} ({self.relative_diff:.3g} of the largest |{self._unit}| "
                f"{self.max_abs_logit:.3g}), same class on {self.argmax_agreement:.2%} of {self.pixels} pixels")


def check_onnx(
    model: nn.Module, path: str | os.PathLike, sizes: Sequence[tuple[int, int]] = ((96, 128), (75, 61)),
    seed: int = 0, arch: str | None = None,
) -> OnnxCheck:
    """Run onnxruntime (CPU execution provider) and PyTorch on random images of the given (H, W) sizes
    and compare their outputs (the file's own: flip-averaged ``probs`` or ``logits``): the largest
    absolute difference, the outputs' scale and the fraction of pixels whose argmax class agrees.
    ``arch`` as for :func:`export_onnx`."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install 'sipe[export]'") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    wrapper = _graph(copy.deepcopy(model), arch, flip=output == "probs")[0].eval()
    device = next(iter(wrapper.parameters()), torch.empty(0)).device
    g = torch.Generator().manual_seed(seed)
    worst = scale = 0.0
    same = pixels = 0
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=g) * 255.0
        (ours,) = session.run([output], {"image": x.numpy()})
        with torch.no_grad():
            ref = wrapper(x.to(device)).float().cpu().numpy()
        if ours.shape != ref.shape:
            raise AssertionError(f"ONNX output shape {ours.shape} != PyTorch {ref.shape} for input {h}x{w}")
        worst = max(worst, float(np.abs(ours.astype(np.float64) - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        same += int((ours.argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * h * w
    return OnnxCheck(max_abs_diff=worst, max_abs_logit=scale, argmax_agreement=same / max(pixels, 1), pixels=pixels,
                     output=output)


def compare_onnx(
    model: nn.Module, path: str | os.PathLike, sizes: Sequence[tuple[int, int]] = ((96, 128), (75, 61)), seed: int = 0
) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs over random images of
    the given (H, W) sizes (CPU execution provider); :func:`check_onnx` gives the relative and argmax
    comparisons too."""
    return check_onnx(model, path, sizes, seed).max_abs_diff
