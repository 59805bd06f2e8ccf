"""Behavioural checks of a trained model: what the tests of `tests/model/` assert and what the
promotion gate will require of a challenger.

Each check runs the model through the shared preprocessing on held-out uint8 images and returns
a :class:`CheckResult` (the measured figure, the threshold, passed or not), so a caller can
assert it (tests), report it (the gate) or print it.

- :func:`invariance`: predictions do not change under small shifts and rotations, kept inside
  the ranges the model was trained to ignore (`augment.translate`, `augment.rotation`);
- :func:`per_class_accuracy`: every class reaches a minimum accuracy (a good mean can hide a
  class the model never gets right);
- :func:`beats_baseline`: the network beats the classical baseline scored on the same split.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.core.checks import CheckResult
from tasks.modeling.artifact import predict
from tasks.modeling.preprocessing import Preprocessing


def shifted_and_rotated(
    images: np.ndarray, shift_fraction: float, degrees: float
) -> dict[str, np.ndarray]:
    """Deterministic variants of uint8 (N, C, H, W) images: shifted by `shift_fraction` of the
    size left/right/up/down and rotated by +/- `degrees` (bilinear, zero fill, as training's
    augmentation)."""
    batch = torch.from_numpy(images).float()
    variants: dict[str, np.ndarray] = {}
    moves = {
        "right": (shift_fraction, 0.0, 0.0),
        "left": (-shift_fraction, 0.0, 0.0),
        "down": (0.0, shift_fraction, 0.0),
        "up": (0.0, -shift_fraction, 0.0),
        f"rotate+{degrees:g}": (0.0, 0.0, degrees),
        f"rotate-{degrees:g}": (0.0, 0.0, -degrees),
    }
    for name, (dx, dy, angle) in moves.items():
        radians = math.radians(angle)
        cos, sin = math.cos(radians), math.sin(radians)
        # affine_grid maps output to input coordinates in [-1, 1]: a shift by f of the size is 2f
        theta = torch.tensor([[cos, -sin, -2 * dx], [sin, cos, -2 * dy]], dtype=torch.float32)
        grid = F.affine_grid(theta.expand(len(batch), 2, 3), list(batch.shape), align_corners=False)
        moved = F.grid_sample(
            batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        variants[name] = moved.round().clamp(0, 255).to(torch.uint8).numpy()
    return variants


def invariance(
    network: nn.Module,
    preprocessing: Preprocessing,
    images: np.ndarray,
    shift_fraction: float,
    degrees: float,
    min_agreement: float,
) -> CheckResult:
    """The share of predictions that stay the same under every small shift and rotation."""
    original = predict(network, preprocessing, images).argmax(axis=1)
    agreements = {
        name: float((predict(network, preprocessing, moved).argmax(axis=1) == original).mean())
        for name, moved in shifted_and_rotated(images, shift_fraction, degrees).items()
    }
    worst_name = min(agreements, key=agreements.get)
    worst = agreements[worst_name]
    return CheckResult(
        "invariance",
        worst,
        min_agreement,
        worst >= min_agreement,
        f"(worst: {worst_name}; shift {shift_fraction:g} of the size, rotation {degrees:g} deg)",
    )


def class_accuracies(
    predicted: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """Each class present in `labels`: the share of its images predicted as it (its recall)."""
    return {classes[c]: float((predicted[labels == c] == c).mean()) for c in np.unique(labels)}


def per_class_accuracy(
    network: nn.Module,
    preprocessing: Preprocessing,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    min_accuracy: float,
) -> CheckResult:
    """The lowest accuracy of any class present in `labels`."""
    predicted = predict(network, preprocessing, images).argmax(axis=1)
    accuracy = class_accuracies(predicted, labels, classes)
    worst_class = min(accuracy, key=accuracy.get)
    worst = accuracy[worst_class]
    return CheckResult(
        "per_class_accuracy",
        worst,
        min_accuracy,
        worst >= min_accuracy,
        f"(worst class: {worst_class})",
    )


def beats_baseline(accuracy: float, baseline_accuracy: float, margin: float = 0.0) -> CheckResult:
    """The network's accuracy is above the baseline's by more than `margin`."""
    lead = accuracy - baseline_accuracy
    return CheckResult(
        "beats_baseline",
        lead,
        margin,
        lead > margin,
        f"(network {accuracy:.4f} vs baseline {baseline_accuracy:.4f})",
    )
