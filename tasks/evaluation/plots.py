"""The evaluate stage's pictures: the confusion matrix and the reliability diagram, as figures.

Each function returns a matplotlib figure (saved by the caller with
:func:`tasks.core.plotting.save_figure`), so a test can look inside it before it becomes pixels.
They draw what :mod:`tasks.evaluation.metrics` computed and compute nothing themselves, so the
picture and `reports/evaluation.json` can never disagree.

- :func:`confusion_figure`: counts per (actual, predicted) pair with the class names. The colour
  is the share of the row (the actual class), so a rare class's mistakes are as visible as a
  common one's; the count is written in every non-empty cell. The figure grows with the number
  of classes (a fixed size per cell), so 10 to 50 classes stay readable.
- :func:`reliability_figure`: accuracy per confidence bin against the diagonal (perfect
  calibration), the gap to the bin's mean confidence shaded, the bin sizes as a histogram below
  and the expected calibration error in the title (Guo et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.core.plotting import integer_ticks, pyplot
from tasks.evaluation.metrics import CalibrationBin

# Every cell gets CELL_INCHES (30 pt) and a 4-digit count at COUNT_POINTS is about 22 pt wide, so
# counts fit their cells at any number of classes (the figure grows; tested at 50 classes).
CELL_INCHES = 0.42
COUNT_POINTS = 9.0


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str = "") -> Any:
    """The confusion matrix `counts[actual, predicted]` with row-normalized colour and counts."""
    n_classes = len(classes)
    if counts.shape != (n_classes, n_classes):
        raise ValueError(f"confusion_figure: counts {counts.shape} for {n_classes} classes")
    plt = pyplot()
    side = float(np.clip(CELL_INCHES * n_classes + 2.5, 6, 24))
    figure, axes = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
    colorbar.set_label("share of the actual class's images")

    for actual, predicted in zip(*np.nonzero(counts), strict=True):
        share = shares[actual, predicted]
        axes.text(
            predicted,
            actual,
            str(counts[actual, predicted]),
            ha="center",
            va="center",
            fontsize=COUNT_POINTS,
            color="white" if share > 0.5 else "black",
        )
    positions = np.arange(n_classes)
    axes.set_xticks(positions, list(classes), fontsize=COUNT_POINTS)
    axes.set_yticks(positions, list(classes), fontsize=COUNT_POINTS)
    if n_classes > 10 or max((len(name) for name in classes), default=0) > 3:
        axes.tick_params(axis="x", labelrotation=90)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title or f"Confusion matrix ({int(counts.sum())} images)")
    return figure


def reliability_figure(bins: Sequence[CalibrationBin], ece: float, title: str = "") -> Any:
    """Accuracy per confidence bin vs the diagonal, with the bin counts as a histogram below."""
    if not bins:
        raise ValueError("reliability_figure: no bins to draw")
    plt = pyplot()
    figure, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(6, 7),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
        layout="constrained",
    )
    lows = np.array([b.low for b in bins])
    widths = np.array([b.high - b.low for b in bins])
    counts = np.array([b.count for b in bins])
    filled = counts > 0
    accuracy = np.array([b.accuracy for b in bins])
    confidence = np.array([b.confidence for b in bins])

    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(
        lows[filled],
        accuracy[filled],
        width=widths[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    # the gap between what the model claims (mean confidence) and what it gets (accuracy)
    top.bar(
        lows[filled],
        (confidence - accuracy)[filled],
        bottom=accuracy[filled],
        width=widths[filled],
        align="edge",
        facecolor="none",  # hatched over the accuracy bar where the model is underconfident
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    top.set_title(title or f"Reliability diagram (ECE {ece:.3f})")

    bottom.bar(lows, counts, width=widths, align="edge", color="grey", edgecolor="black")
    for low, width, count in zip(lows[filled], widths[filled], counts[filled], strict=True):
        bottom.annotate(
            str(count),
            (low + width / 2, count),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 1),
            textcoords="offset points",
        )
    bottom.set_ylim(0, max(int(counts.max()), 1) * 1.25)  # room for the largest bin's label
    integer_ticks(bottom.yaxis)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("images")
    return figure
