"""Image files the tests plant in sources: seeded noise, PNG bytes, a file written with its folders.

Shared by the tests of code and their end-to-end counterparts (validate, split/augment), so a
planted image is made the same way everywhere.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    """`array` encoded as a PNG (`save` goes to PIL: compress_level, pnginfo, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, "PNG", **save)
    return buffer.getvalue()


def noise(seed: int, shape: tuple[int, ...] = (16, 16)) -> np.ndarray:
    """Seeded uint8 noise: distinct seeds give distinct images (and distinct bytes)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write(path: Path, data: bytes) -> None:
    """Write `data` to `path`, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
