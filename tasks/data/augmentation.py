"""Batched image augmentation on tensors: every image of a batch gets its own random parameters.

One call transforms a whole (N, C, H, W) float batch in [0, 1] with a handful of vectorized
tensor operations (one `affine_grid` + `grid_sample` for rotation, scale, translation and flips;
broadcast arithmetic for brightness, contrast and noise; a mask for random erasing), on whatever
device the batch is on. torchvision.transforms.v2 draws one set of parameters per call, so on a
batch it would rotate every image by the same angle; per-image parameters need this module.
`torchvision_equivalent` gives the same augmentation as a per-image torchvision v2 pipeline
(used by the data_throughput benchmark as the naive path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tasks.core.config import AugmentConfig


class BatchAugment(torch.nn.Module):
    """Random affine + brightness/contrast + noise + erasing, per image, batched."""

    def __init__(self, config: AugmentConfig):
        super().__init__()
        if config.hflip == "auto":
            raise ValueError(
                "augment.hflip: auto must be resolved from the augment stage's verdict first "
                "(tasks.data.mirror.resolve_auto)"
            )
        self.config = config

    def _uniform(self, low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
        device = generator.device
        return low + (high - low) * torch.rand(n, generator=generator, device=device)

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment `images` (N, C, H, W, float in [0, 1], on generator's device)."""
        config = self.config
        n, _channels, height, width = images.shape
        if n == 0:
            return images
        uniform = self._uniform

        # rotation, scale, translation, flips: one sampling grid per image
        angle = uniform(-config.rotation, config.rotation, n, generator) * (math.pi / 180)
        scale = uniform(config.scale[0], config.scale[1], n, generator)
        shift_x = uniform(-config.translate, config.translate, n, generator) * 2
        shift_y = uniform(-config.translate, config.translate, n, generator) * 2
        flip_x = torch.ones(n, device=images.device)
        flip_y = torch.ones(n, device=images.device)
        if config.hflip:
            flip_x = torch.where(uniform(0, 1, n, generator) < 0.5, -1.0, 1.0)
        if config.vflip:
            flip_y = torch.where(uniform(0, 1, n, generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos * flip_x, -sin * flip_y, shift_x], dim=1),
                torch.stack([sin * flip_x, cos * flip_y, shift_y], dim=1),
            ],
            dim=1,
        ).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(
            images, grid, mode="bilinear", padding_mode=config.fill, align_corners=False
        )

        # brightness and contrast
        brightness = uniform(1 - config.brightness, 1 + config.brightness, n, generator)
        contrast = uniform(1 - config.contrast, 1 + config.contrast, n, generator)
        images = images * brightness.view(n, 1, 1, 1).to(images.dtype)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * contrast.view(n, 1, 1, 1).to(images.dtype) + mean

        # Gaussian noise
        if config.noise_std > 0:
            noise = torch.randn(images.shape, generator=generator, device=images.device)
            images = images + config.noise_std * noise.to(images.dtype)
        images = images.clamp_(0.0, 1.0)

        # random erasing: one rectangle per chosen image, filled with zeros
        if config.erase_prob > 0:
            chosen = uniform(0, 1, n, generator) < config.erase_prob
            area = uniform(config.erase_scale[0], config.erase_scale[1], n, generator)
            log_ratio = uniform(math.log(0.3), math.log(3.3), n, generator)
            ratio = torch.exp(log_ratio)
            erase_h = (torch.sqrt(area * ratio) * height).clamp(1, height)
            erase_w = (torch.sqrt(area / ratio) * width).clamp(1, width)
            top = uniform(0, 1, n, generator) * (height - erase_h)
            left = uniform(0, 1, n, generator) * (width - erase_w)
            rows = torch.arange(height, device=images.device).view(1, height, 1)
            cols = torch.arange(width, device=images.device).view(1, 1, width)
            inside = (
                (rows >= top.view(n, 1, 1))
                & (rows < (top + erase_h).view(n, 1, 1))
                & (cols >= left.view(n, 1, 1))
                & (cols < (left + erase_w).view(n, 1, 1))
                & chosen.view(n, 1, 1)
            )
            images = images.masked_fill(inside.unsqueeze(1), 0.0)
        return images


def augment_uint8(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator, batch_size: int = 1024
) -> torch.Tensor:
    """Augment a uint8 (N, C, H, W) tensor in batches; returns uint8 of the same shape."""
    augment = BatchAugment(config)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(generator.device).float().div_(255.0)
        augmented = augment(batch, generator)
        outputs.append(augmented.mul_(255.0).round_().to(torch.uint8).cpu())
    return torch.cat(outputs) if outputs else images.clone()


def torchvision_equivalent(config: AugmentConfig):
    """The same augmentation as a per-image torchvision.transforms.v2 pipeline on PIL images."""
    from torchvision.transforms import v2

    if config.hflip == "auto":
        raise ValueError("augment.hflip: auto must be resolved first (tasks.data.mirror)")
    steps = [
        v2.RandomAffine(
            degrees=config.rotation,
            translate=(config.translate, config.translate),
            scale=config.scale,
        ),
    ]
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if config.vflip:
        steps.append(v2.RandomVerticalFlip())
    steps += [
        v2.ColorJitter(brightness=config.brightness, contrast=config.contrast),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.GaussianNoise(sigma=config.noise_std, clip=True),
        v2.RandomErasing(p=config.erase_prob, scale=config.erase_scale, value=0),
    ]
    return v2.Compose(steps)
