"""The one preprocessing: the same pixels as the split stage packs, the same normalization as
training applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.data.packed import pack
from tasks.modeling.preprocessing import Preprocessing


def test_pixels_of_an_image_are_what_split_packs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, mode, shape in (("gray.png", "L", (37, 23)), ("colour.png", "RGB", (30, 41, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(
            tmp_path / name
        )
    for channels in (1, 3):
        preprocessing = Preprocessing(16, channels, [0.5] * channels, [0.25] * channels)
        packed = pack(["gray.png", "colour.png"], tmp_path, channels, 16)
        for index, name in enumerate(("gray.png", "colour.png")):
            with Image.open(tmp_path / name) as image:
                image.load()
                assert np.array_equal(preprocessing.pixels(image), packed[index])


def test_forward_scales_then_normalizes_with_the_train_statistics() -> None:
    preprocessing = Preprocessing(4, 3, [0.1, 0.2, 0.3], [0.5, 0.25, 0.125])
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    expected = (images / 255.0 - np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)) / np.array(
        [0.5, 0.25, 0.125]
    ).reshape(1, 3, 1, 1)
    result = preprocessing(images)
    assert result.dtype == torch.float32
    assert np.allclose(result.numpy(), expected, atol=1e-6)
    assert images.dtype == np.uint8  # the input is not modified


def test_channel_statistics_must_match_the_channels() -> None:
    with pytest.raises(ValueError, match="3 channel"):
        Preprocessing(16, 3, [0.5], [0.5])
