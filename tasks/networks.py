"""Networks (plain nn.Module, no Lightning), built from `model.*` settings."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """A small VGG-style CNN for small images (8 to 64 px): three stages, global average pool.

    Global pooling makes it independent of the input size; about 0.3M parameters at width 32.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def build_network(
    arch: str, in_channels: int, num_classes: int, width: int, dropout: float
) -> nn.Module:
    if arch == "cnn":
        return CompactCNN(in_channels, num_classes, width=width, dropout=dropout)
    raise ValueError(f"model.arch must be one of ['cnn'], got {arch!r}")
