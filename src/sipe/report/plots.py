"""The report's charts, drawn with matplotlib (Agg, no display needed) and returned as PNG bytes."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from sipe.io import voc_palette


def png_uri(png: bytes) -> str:
    """The ``data:image/png;base64,...`` URI of PNG bytes (as every plot here returns), for an ``<img src>``."""
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never open a window, whatever the user's default
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _nan(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def grouped_bars(
    class_names: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    title: str,
) -> bytes:
    """One group of bars per class, one bar per series (``series[name]`` has one value per class;
    ``None`` = undefined, drawn as a gap). Returns PNG bytes."""
    plt = _pyplot()
    k = len(class_names)
    n = max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.55 * k * n / 2 + 2), 14.0), 3.6))
    width = 0.8 / n
    x = np.arange(k)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, np.nan_to_num(_nan(values), nan=0.0), width, label=name)
    ax.set_xticks(x, list(class_names), rotation=45 if k > 8 else 0, ha="right" if k > 8 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def threshold_sweep(
    thresholds: Sequence[float], mious: Sequence[float | None], best: float, is_cam_miou: float | None
) -> bytes:
    """CAM mIoU against the background threshold (T,), the best one marked, IS-CAM's mIoU as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    y = _nan(mious)
    ax.plot(thresholds, y, label="CAM", color="tab:blue")
    if np.isfinite(y).any():
        i = int(np.nanargmax(y))
        ax.plot([thresholds[i]], [y[i]], "o", color="tab:blue")
        ax.annotate(f"best {best:.2f}: {y[i]:.3f}", (thresholds[i], y[i]), textcoords="offset points",
                    xytext=(6, 6))
    if is_cam_miou is not None:
        ax.axhline(is_cam_miou, color="tab:red", linestyle="--", label=f"IS-CAM {is_cam_miou:.3f}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _png(fig)


def training_curves(scalars: dict[str, tuple[Sequence[int], Sequence[float]]]) -> bytes:
    """One small panel per scalar tag (steps (T,), values (T,)) of one training stage."""
    plt = _pyplot()
    tags = list(scalars)
    cols = min(len(tags), 4)
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags, strict=False):
        steps, values = scalars[tag]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def confusion_heatmap(matrix: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """(K, K) counts, rows = ground truth, shown normalised per row (the share of each class's pixels)."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(class_names)
    size = min(max(4.0, 0.45 * k + 2), 14.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), list(class_names))
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if k <= 21:  # numbers stay legible up to the VOC classes
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row's pixels")
    return _png(fig)


def score_distributions(groups: dict[str, tuple[Sequence[float], Sequence[float]]], threshold: float) -> bytes:
    """One small histogram per class of the classifier's scores in [0, 1]: ``groups[name]`` = (scores of the
    images tagged with the class, of those not), the decision threshold as a dashed line."""
    plt = _pyplot()
    names = list(groups)
    cols = min(max(len(names), 1), 5)
    rows = -(-max(len(names), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    bins = np.linspace(0.0, 1.0, 21)
    for ax, name in zip(axes.flat, names, strict=False):
        pos, neg = groups[name]
        ax.hist(neg, bins=bins, color="tab:gray", alpha=0.6, label=f"without ({len(neg)})")
        ax.hist(pos, bins=bins, color="tab:green", alpha=0.6, label=f"with ({len(pos)})")
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("classifier score (sigmoid)", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def palette_css(index: int) -> str:
    """``rgb(r, g, b)`` of class ``index`` in the VOC palette (the colours of the label thumbnails)."""
    r, g, b = voc_palette()[index]
    return f"rgb({r}, {g}, {b})"
