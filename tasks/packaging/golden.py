"""The golden requests: seeded test images as PNG files, and the answers the offline model gives.

The images are drawn from the packed test split (`serve.golden_images` of them, seeded by
`seed`), written as PNG files (lossless, so the served and the offline path see the same
pixels), and the expected answer of each is computed offline: the same bytes through the same
decoder and preprocessing the service uses, then the champion's served ONNX file run by
:class:`~tasks.compression.runtime.OnnxClassifier`. A served answer that differs means the bento
serves something other than what the gate judged: another model, another preprocessing, or a
decoding that drifted.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.compression.runtime import OnnxClassifier
from tasks.core.config import DataConfig
from tasks.core.errors import UserError
from tasks.modeling.artifact import ModelCard
from tasks.serving.uploads import ImageRules, decode_image


@dataclass(frozen=True)
class Golden:
    """The golden images and what the offline model answers for each, in the same order."""

    indices: list[int]  # positions in the packed test split
    files: list[bytes]  # PNG files, as sent
    probabilities: np.ndarray  # (N, classes) from the offline model
    classes: list[str]

    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.probabilities.argmax(axis=1)]


def golden_indices(available: int, count: int, seed: int) -> list[int]:
    """`count` distinct positions out of `available` (all of them when fewer), drawn with
    `seed`: the same requests on every run, a different sample than the first N."""
    if available == 0:
        raise UserError("the test split is empty: there are no images for the golden requests")
    chosen = np.random.default_rng(seed).choice(
        available, size=min(count, available), replace=False
    )
    return [int(index) for index in chosen]


def png_file(image: np.ndarray) -> bytes:
    """A uint8 (C, H, W) image (C = 1 or 3) as the bytes of a PNG file."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"png_file takes a uint8 (1 or 3, H, W) image, got {image.shape}")
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="L" if image.shape[0] == 1 else "RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def image_rules(data: DataConfig, card_file: Path) -> ImageRules:
    """The rules the service decodes uploads with: validate's limits, the model's preprocessing."""
    card = ModelCard.load(card_file)
    return ImageRules(
        min_size=data.min_size,
        max_pixels=data.max_pixels,
        channels=card.channels,
        pixels=card.preprocessing().pixels,
    )


def offline_pixels(files: list[bytes], rules: ImageRules) -> np.ndarray:
    """The model's input for each file, through the service's own decoder (from disk, as the
    service reads its uploads)."""
    with tempfile.TemporaryDirectory(prefix="sixfold-golden-") as folder:
        pixels = []
        for number, data in enumerate(files):
            path = Path(folder) / f"golden-{number}.png"
            path.write_bytes(data)
            pixels.append(decode_image(path, rules, f"golden image {number}").pixels)
    return np.stack(pixels)


def golden_set(
    test_images: np.ndarray, count: int, seed: int, served_onnx: Path, rules: ImageRules
) -> Golden:
    """The golden requests out of the packed test images, with the offline model's answers."""
    indices = golden_indices(len(test_images), count, seed)
    files = [png_file(test_images[index]) for index in indices]
    classifier = OnnxClassifier(served_onnx, threads=1)
    probabilities = classifier.probabilities(offline_pixels(files, rules))
    return Golden(indices, files, probabilities, classifier.classes)
