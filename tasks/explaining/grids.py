"""Pictures of attributions: one grid per method for the report, one overlay PNG for the service.

An overlay draws the image in gray, dimmed, under the attribution summed over channels: red
where a pixel speaks for the explained class, blue where it speaks against, transparent where it
does not matter (opacity follows the magnitude, so the digit stays visible). Small images keep
their pixels square (no smoothing); RGB images are shown in colour beside their overlay.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.core.config import ExplainConfig
from tasks.core.plotting import pyplot, save_figure
from tasks.explaining.attributions import ScaledInputModel, attribute, predicted_classes
from tasks.modeling.preprocessing import Preprocessing

SMALL_IMAGE = 64  # up to this size, pixels are drawn as squares (a 16 px digit stays crisp)
PAIRS_PER_LINE = 4  # image | overlay pairs side by side in a grid
LABEL_CHARS = 14  # class names are cut to this length in titles
FOR_CLASS = (0.85, 0.05, 0.05)  # red: pixels that raise the explained class's score
AGAINST_CLASS = (0.05, 0.25, 0.95)  # blue: pixels that lower it
WRONG = "#c62828"  # the colour of a misclassified row's titles and frame
LEGEND = "red: for the predicted class, blue: against; red frame: misclassified"


@dataclass(frozen=True)
class GridRow:
    """One explained image: scaled pixels and attribution (C, H, W), true and predicted class."""

    image: np.ndarray
    attribution: np.ndarray
    true_label: str
    predicted_label: str

    @property
    def misclassified(self) -> bool:
        return self.true_label != self.predicted_label


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _interpolation(image: np.ndarray) -> str:
    return "nearest" if image.shape[-1] <= SMALL_IMAGE else "antialiased"


def draw_image(axis: Any, image: np.ndarray) -> None:
    """A scaled (C, H, W) image: gray for one channel, colour for three."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    axis.imshow(
        np.clip(pixels, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation=_interpolation(image)
    )
    axis.set_xticks([])
    axis.set_yticks([])


def draw_overlay(axis: Any, image: np.ndarray, attribution: np.ndarray) -> None:
    """The attribution's heatmap over the dimmed gray image (see the module docstring)."""
    heat = attribution.sum(axis=0)
    # the 99th percentile, not the maximum: one extreme pixel would fade a large image's map
    limit = float(np.percentile(np.abs(heat), 99)) or float(np.abs(heat).max()) or 1.0
    colours = np.zeros((*heat.shape, 4))
    colours[..., :3] = np.where((heat >= 0)[..., None], FOR_CLASS, AGAINST_CLASS)
    colours[..., 3] = 0.9 * np.sqrt(np.clip(np.abs(heat) / limit, 0, 1))
    axis.imshow(
        image.mean(axis=0),
        cmap="gray",
        vmin=0,
        vmax=1,
        alpha=0.45,
        interpolation=_interpolation(image),
    )
    axis.imshow(colours, interpolation=_interpolation(image))
    axis.set_xticks([])
    axis.set_yticks([])


def _mark_wrong(axes: Sequence[Any]) -> None:
    for axis in axes:
        axis.title.set_color(WRONG)
        axis.title.set_fontweight("bold")
        for spine in axis.spines.values():
            spine.set_edgecolor(WRONG)
            spine.set_linewidth(3)


def _slots(rows: Sequence[GridRow], per_line: int) -> list[int]:
    """The grid position of each row: misclassified rows start on a line of their own."""
    slots, position = [], 0
    for index, row in enumerate(rows):
        if row.misclassified and index > 0 and not rows[index - 1].misclassified:
            position = -(-position // per_line) * per_line  # round up to the next line
        slots.append(position)
        position += 1
    return slots


def save_grid(path: Path, rows: Sequence[GridRow], title: str) -> None:
    """Write one method's grid: per row the image (true class) and its overlay (predicted)."""
    plt = pyplot()
    per_line = max(1, min(PAIRS_PER_LINE, len(rows)))
    slots = _slots(rows, per_line)
    lines = max(1, -(-(slots[-1] + 1) // per_line)) if rows else 1
    panel = 1.5 if not rows or rows[0].image.shape[-1] <= SMALL_IMAGE else 2.4
    figure, axes = plt.subplots(
        lines,
        2 * per_line,
        figsize=(2 * per_line * panel, lines * (panel + 0.35) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for axis in axes.flat:
        axis.set_axis_off()
    for row, slot in zip(rows, slots, strict=True):
        image_axis, overlay_axis = axes[slot // per_line, 2 * (slot % per_line) :][:2]
        image_axis.set_axis_on()
        overlay_axis.set_axis_on()
        draw_image(image_axis, row.image)
        draw_overlay(overlay_axis, row.image, row.attribution)
        image_axis.set_title(f"true {_short(row.true_label)}", fontsize=8)
        overlay_axis.set_title(f"pred {_short(row.predicted_label)}", fontsize=8)
        if row.misclassified:
            _mark_wrong((image_axis, overlay_axis))
    if not rows:
        axes[0, 0].text(0, 0.5, "no test images to explain", fontsize=9)
    width_chars = int(2 * per_line * panel * 11)
    figure.suptitle(textwrap.fill(f"{title} ({LEGEND})", width_chars), fontsize=9)
    save_figure(figure, path)


def overlay_png(
    network: nn.Module,
    preprocessing: Preprocessing,
    image_uint8_chw: np.ndarray,
    target: int | None = None,
) -> bytes:
    """The PNG of one uint8 (C, H, W) image beside its Integrated Gradients overlay, for class
    `target` (the network's prediction when None); the stage's default steps and batch size."""
    config = ExplainConfig()
    model = ScaledInputModel(network, preprocessing).eval()
    image = preprocessing.scale(np.ascontiguousarray(image_uint8_chw)[None])
    explained = int(predicted_classes(model, image, 1)[0]) if target is None else int(target)
    maps = attribute("integrated_gradients", model, image, torch.tensor([explained]), config, 0)
    plt = pyplot()
    panel = 2.0 if image.shape[-1] <= SMALL_IMAGE else 3.0
    figure, (image_axis, overlay_axis) = plt.subplots(
        1, 2, figsize=(2 * panel, panel + 0.4), layout="constrained"
    )
    draw_image(image_axis, image[0].numpy())
    draw_overlay(overlay_axis, image[0].numpy(), maps[0])
    image_axis.set_title("input", fontsize=9)
    overlay_axis.set_title(f"class {explained}: integrated gradients", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
