"""PNG plots people would rather look at than read: training curves, confusion matrices."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgel2.utils import atomic_path


def pyplot():
    """matplotlib's pyplot, drawing into files only (the Agg backend: never a window)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def plot_curves(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss, top-1 and learning rate per epoch from ``metrics.csv`` rows, as a PNG: train
    and the held-out split the rows have (``val_*``: validation, else ``test_*``), on
    whole-number epoch ticks."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    held = "val" if rows and "val_acc" in rows[0] else "test"
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 4))
    for split, style, label in (("train", "-", "train"),
                                (held, "--", "validation" if held == "val" else "test")):
        ax_loss.plot(epochs, [float(r[f"{split}_loss"]) for r in rows], style, marker=".",
                     label=label)
        ax_acc.plot(epochs, [100 * float(r[f"{split}_acc"]) for r in rows], style, marker=".",
                    label=label)
    ax_lr.plot(epochs, [float(r["lr"]) for r in rows], marker=".", color="tab:green")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate (at the epoch's end)")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                   title: str = "") -> Path:
    """A row-normalised confusion matrix (true class down, predicted across) as a PNG."""
    plt = pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if normalised[i, j] > 0.5 else "black")
    fig.tight_layout()
    return save_figure(fig, plt, path)


def save_figure(fig, plt, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def plot_reliability(curves: Mapping[str, Sequence[dict]], path: str | os.PathLike,
                     title: str = "") -> Path:
    """A reliability diagram: accuracy against confidence per bin (from
    :func:`edgel2.calibration.reliability_bins`), one line per entry of ``curves`` (e.g.
    before and after calibration, its ECE in the label), with the diagonal a perfectly
    calibrated model would follow and a bar of how many images fall in each bin."""
    plt = pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for i, (label, bins) in enumerate(curves.items()):
        filled = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o-",
                label=label)
        width = (bins[0]["high"] - bins[0]["low"]) / (len(curves) + 1)
        ax_count.bar([b["low"] + (i + 0.5) * width for b in bins], [b["count"] for b in bins],
                     width=width, align="edge", label=label)
    ax.set(ylabel="accuracy in the bin", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title or "reliability diagram", fontsize=9)
    ax_count.set(xlabel="confidence (top-1 probability)", ylabel="images")
    ax_count.set_yscale("log")
    for a in (ax, ax_count):
        a.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, plt, path)
