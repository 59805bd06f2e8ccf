"""The model-parameter randomization check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A saliency map that looks the same whatever the weights explains the image, not the model. So
each method explains the same images, for the same classes and with the same random draws, twice:
with the trained weights and with the same architecture's weights re-initialised under a seed.
The two maps must differ: the Spearman rank correlation of their absolute values (summed over
channels, per image, then averaged over the images) must stay below a threshold.

Only pixels that differ from black are ranked. Integrated Gradients (black baseline) gives a
black pixel exactly 0 whatever the weights, and LIME (superpixels switched off to black) gives an
all-black superpixel no weight either; those ties agree for *every* pair of models. Measured on
the digits model (30 % of the test pixels black; 32 test images, 5 seeds): Integrated Gradients'
trained-vs-random correlation is 0.83-0.84 over all pixels and 0.52-0.56 over the non-black ones;
random-vs-another-random 0.81-0.83 and 0.48-0.54. Over all pixels the ties alone would fail the
check for any model; over the informative ones a map that ignores the weights still scores 1.0.
On RGB photos nearly every pixel is non-black and the mask changes nothing.

What the check can and cannot tell: absolute maps of the digits correlate about 0.5 between *any*
two models (the attribution's size follows the stroke's brightness, x - baseline), so the check
catches maps that do not depend on the weights (1.0: an edge detector, a bug that explains the
input), not an untrained model: GradientSHAP's trained-vs-random 0.46-0.52, random-vs-random
0.44-0.51. LIME scores 0: a re-initialised network's logits barely move (std 0.0008 across test
images, 3.5 trained), so its LIME map is all zero. Hence the default threshold 0.7, between the
input-driven floor (about 0.55) and identical maps (1.0).

Both maps use the same random draws (one seed), so only the weights differ: identical weights
give identical maps, while GradientSHAP's maps of one model under two seeds correlate only 0.7.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from tasks.core.config import ExplainConfig, ExplainMethod
from tasks.explaining.attributions import attribute, seeded


@dataclass(frozen=True)
class SanityResult:
    """One method's trained-vs-randomized rank correlation, and whether it is low enough."""

    method: ExplainMethod
    correlation: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.correlation < self.threshold

    def as_json(self) -> dict[str, Any]:
        return {"correlation": self.correlation, "threshold": self.threshold, "passed": self.passed}


def randomized_copy(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """A new network from `build` (the same architecture) with weights initialised under `seed`
    (the global generators are restored afterwards, so drawing it changes nothing else)."""
    with seeded(seed):
        return build().eval()


def informative_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H*W) booleans: the pixels where an image (N, C, H, W) is not black in some channel."""
    return (images != 0).any(axis=1).reshape(len(images), -1)


def _spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rho of two vectors; a constant map has no ranks, so it agrees (1.0) only with
    another constant map (an all-zero LIME map of a random network means it ignores the input)."""
    first_constant, second_constant = np.ptp(first) == 0, np.ptp(second) == 0
    if first_constant or second_constant:
        return 1.0 if first_constant and second_constant else 0.0
    return float(spearmanr(first, second).statistic)


def rank_correlation(first: np.ndarray, second: np.ndarray, images: np.ndarray) -> float:
    """Mean over images of the Spearman correlation of two attribution maps (N, C, H, W),
    absolute and summed over channels, on each image's informative pixels (all of them when
    fewer than two are informative)."""
    count = len(images)
    first_maps = np.abs(first).sum(axis=1).reshape(count, -1)
    second_maps = np.abs(second).sum(axis=1).reshape(count, -1)
    masks = informative_pixels(images)
    correlations = []
    for first_map, second_map, mask in zip(first_maps, second_maps, masks, strict=True):
        keep = mask if mask.sum() >= 2 else np.ones_like(mask)
        correlations.append(_spearman(first_map[keep], second_map[keep]))
    return float(np.mean(correlations))


def randomization_check(
    method: ExplainMethod,
    trained: nn.Module,
    randomized: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: ExplainConfig,
    seed: int,
) -> SanityResult:
    """Explain scaled `images` for `targets` with both models (same draws); compare the maps."""
    trained_maps = attribute(method, trained, images, targets, config, seed)
    random_maps = attribute(method, randomized, images, targets, config, seed)
    correlation = rank_correlation(trained_maps, random_maps, images.numpy())
    return SanityResult(method, correlation, config.sanity_max_correlation)
