"""Tiny models the tests make without training: a width-4 CNN (no dropout, normalization mean 0.5
and std 0.25 per channel), freshly initialised from a seed, and its card.

Shared by the tests that need a model to register, compress, export, serve or package
(tests/code/test_registry.py, test_compress.py, test_serving.py, test_serve_load.py and
tests/system/test_package.py), so such a model is made the same way everywhere: the same seed
gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tasks.data.packed import PackedMeta
from tasks.modeling.artifact import ModelCard, Normalization, save_model


def tiny_card(
    classes: list[str], image_size: int, fingerprint: str, channels: int = 1
) -> ModelCard:
    """The card of a width-4 CNN without dropout for `channels`x`image_size`² images."""
    return ModelCard.create(
        arch="cnn",
        width=4,
        dropout=0.0,
        classes=classes,
        image_size=image_size,
        channels=channels,
        normalization=Normalization(mean=[0.5] * channels, std=[0.25] * channels),
        params_fingerprint=fingerprint,
    )


def tiny_network(card: ModelCard, seed: int) -> nn.Module:
    """`card`'s network, freshly initialised after `torch.manual_seed(seed)`, in eval mode."""
    torch.manual_seed(seed)
    return card.build_network().eval()


def save_tiny_model(
    models_dir: Path, seed: int, classes: list[str], image_size: int, fingerprint: str
) -> ModelCard:
    """A freshly initialised tiny model (weights and card) saved into `models_dir`; its card."""
    card = tiny_card(classes, image_size, fingerprint)
    save_model(tiny_network(card, seed), card, models_dir)
    return card


def save_tiny_meta(path: Path, card: ModelCard, counts: dict[str, int]) -> None:
    """`data/packed/meta.json` matching `card` (classes, size, channels, normalization), with
    the images per split in `counts`."""
    PackedMeta.create(
        classes=card.classes,
        image_size=card.image_size,
        channels=card.channels,
        mean=card.normalization.mean,
        std=card.normalization.std,
        counts=counts,
        near_duplicate_pairs_across_splits=0,
    ).save(path)
