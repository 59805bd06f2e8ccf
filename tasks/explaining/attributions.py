"""Attributions from Captum: Integrated Gradients, GradientSHAP and LIME, on pixel images.

Every method explains ``normalize + network`` on the *scaled* image (float in [0, 1], before the
shared normalization; :class:`ScaledInputModel`), so the baselines are real pictures (black,
blurred, noise) and an attribution is one value per pixel of the picture a person looks at.

Captum needs autograd: it fails under ``torch.inference_mode()``, and Integrated Gradients and
GradientSHAP need gradients, so only LIME (which only calls forward) runs under ``no_grad``.
Captum draws its random numbers from the global generators, torch's (LIME's perturbations) and
numpy's (GradientSHAP's baselines and points on the path): :func:`seeded` seeds both from
``params.seed`` and restores them afterwards, so a rerun gives the same maps and nothing else in
the process is disturbed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, Lime
from torch import nn
from torch.nn import functional

from tasks.core.config import ExplainConfig, ExplainMethod
from tasks.modeling.preprocessing import Preprocessing

# GradientSHAP's noise baselines: dark noisy pictures. Full-range uniform noise drowned the
# maps: two runs of the digits model under different seeds correlated 0.36 (Spearman, 16
# samples); noise up to 0.3 gives 0.71 and still adds baselines unlike the black one of IG.
NOISE_BASELINES = 2
NOISE_LEVEL = 0.3


class ScaledInputModel(nn.Module):
    """The function Captum explains: images scaled to [0, 1] -> normalize -> network -> logits."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network, self.preprocessing = network, preprocessing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocessing.normalize(images))


def predicted_classes(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's class for each scaled image (the target every method explains by default)."""
    with torch.no_grad():
        return torch.cat(
            [model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
        )


def superpixels(channels: int, size: int, grid: int) -> torch.Tensor:
    """LIME's feature mask (1, C, H, W): `grid` x `grid` squares, shared by all channels."""
    cells = torch.arange(size) * grid // size  # the square row (or column) of each pixel
    mask = cells.view(-1, 1) * grid + cells.view(1, -1)
    return mask.expand(1, channels, size, size).contiguous()


def blurred(image: torch.Tensor) -> torch.Tensor:
    """`image` (C, H, W) box-blurred over a quarter of its size: its shape without its details."""
    kernel = max(3, image.shape[-1] // 4) | 1  # odd, so the picture keeps its size
    return functional.avg_pool2d(
        image[None], kernel, stride=1, padding=kernel // 2, count_include_pad=False
    )[0]


def shap_baselines(image: torch.Tensor) -> torch.Tensor:
    """GradientSHAP's reference pictures for `image`: black, blurred and dark uniform noise
    (drawn from torch's generator, which :func:`attribute` seeds)."""
    noise = NOISE_LEVEL * torch.rand((NOISE_BASELINES, *image.shape))
    return torch.cat([torch.zeros_like(image)[None], blurred(image)[None], noise])


def integrated_gradients(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: ExplainConfig
) -> torch.Tensor:
    """From a black picture to the image; `internal_batch_size` bounds images x steps."""
    method = IntegratedGradients(model)
    return method.attribute(
        images,
        baselines=torch.zeros_like(images),
        target=targets,
        n_steps=config.ig_steps,
        internal_batch_size=config.internal_batch_size,
    )


def gradient_shap(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: ExplainConfig
) -> torch.Tensor:
    """One image at a time (its blurred copy is among its baselines): `shap_samples` draws."""
    method = GradientShap(model)
    maps = [
        method.attribute(
            image[None],
            baselines=shap_baselines(image),
            target=int(target),
            n_samples=config.shap_samples,
        )
        for image, target in zip(images, targets, strict=True)
    ]
    return torch.cat(maps)


def lime(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: ExplainConfig
) -> torch.Tensor:
    """A linear model over square superpixels switched off (black), one per image (Captum's
    default Lasso and exponential kernel); forward batches bounded by `internal_batch_size`."""
    method = Lime(model)
    mask = superpixels(images.shape[1], images.shape[-1], config.lime_grid)
    with torch.no_grad():  # one image at a time: Captum fits one linear model per image anyway
        maps = [
            method.attribute(
                image[None],
                baselines=0.0,
                target=int(target),
                feature_mask=mask,
                n_samples=config.lime_samples,
                perturbations_per_eval=min(config.lime_samples, config.internal_batch_size),
            )
            for image, target in zip(images, targets, strict=True)
        ]
    return torch.cat(maps)


Attributor = Callable[[nn.Module, torch.Tensor, torch.Tensor, ExplainConfig], torch.Tensor]
ATTRIBUTORS: dict[ExplainMethod, Attributor] = {
    "integrated_gradients": integrated_gradients,
    "gradient_shap": gradient_shap,
    "lime": lime,
}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's and numpy's global generators seeded with `seed` inside, restored after."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def attribute(
    method: ExplainMethod,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: ExplainConfig,
    seed: int,
) -> np.ndarray:
    """Attributions (N, C, H, W) of `model` for scaled `images` w.r.t. `targets`, seeded."""
    if len(images) == 0:  # nothing to explain (torch.cat of no per-image maps would fail)
        return np.zeros(tuple(images.shape), dtype=np.float32)
    model.eval()
    with seeded(seed):
        maps = ATTRIBUTORS[method](model, images, targets, config)
    return maps.detach().cpu().numpy()
