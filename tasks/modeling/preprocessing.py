"""The one preprocessing: exactly how an image becomes the network's input.

Training, evaluation, export and serving all use this module, so they cannot drift apart:

1. pixels: decode (sixfold's safe decoder), convert to `channels` (1 or 3) and resize to
   `image_size` x `image_size`: the same steps the split stage packs with, giving a uint8
   (C, H, W) array;
2. scale: uint8 -> float32 in [0, 1];
3. normalize: subtract the train split's per-channel mean and divide by its std.

Training inserts its random augmentation between 2 and 3 (`scale`, augment, `normalize`);
everything else calls the module on uint8 batches (`preprocessing(images)` = 2 then 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from tasks.data.images import resize, to_array


class Preprocessing(nn.Module):
    """uint8 (N, C, H, W) -> normalized float32; mean and std are buffers (they follow .to())."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        if not len(mean) == len(std) == channels:
            raise ValueError(
                f"preprocessing: {channels} channel(s) need as many means and stds, "
                f"got {len(mean)} and {len(std)}"
            )
        self.image_size, self.channels = image_size, channels
        shape = (1, channels, 1, 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """A decoded image -> uint8 (C, H, W) at this model's size and channels (as packed)."""
        array = resize(to_array(image, self.channels), self.image_size)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    @staticmethod
    def scale(images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] (a new tensor; the input is never modified)."""
        return torch.as_tensor(images).float().div_(255.0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] images -> normalized with the train split's statistics."""
        return (images - self.mean) / self.std

    def forward(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> the network's input."""
        tensor = torch.as_tensor(images)
        return self.normalize(self.scale(tensor.to(self.mean.device)))
