"""Decoding images safely and converting any mode to the configured channels.

The size of an image is judged from its header before any pixel is decoded (`probe`), so a
decompression bomb costs a few kilobytes. PIL's own decompression-bomb guard stays on for the
whole process (a service importing this module keeps it): an image over twice PIL's limit
cannot even be opened and is reported as :class:`OversizedImage`; `data.max_pixels` is capped
at PIL's limit by the config, so everything sixfold accepts is also something PIL decodes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image


class UndecodableImage(ValueError):
    """The file is not an image PIL can decode completely."""


class OversizedImage(ValueError):
    """The header declares more pixels than PIL agrees to open (a likely decompression bomb)."""


def probe(path: str | Path) -> tuple[int, int, str, str]:
    """Width, height, mode and format from the header only; no pixel data is decoded."""
    try:
        with warnings.catch_warnings():
            # between PIL's limit and twice it PIL only warns; the caller judges the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.width, image.height, image.mode, image.format or ""
    except Image.DecompressionBombError as error:
        raise OversizedImage(_short(error)) from error
    except Exception as error:  # PIL raises many types for bad input
        raise UndecodableImage(_short(error)) from error


def load_converted(path: str | Path, channels: int) -> np.ndarray:
    """Decode fully and convert to uint8 HxWxC with C = `channels` (1 or 3).

    Palette, RGBA/LA (composited on white), 16-bit and float grayscale, CMYK and colour vs
    grayscale are all converted rather than rejected.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_array(image, channels)
    except Exception as error:
        raise UndecodableImage(_short(error)) from error


def to_array(image: Image.Image, channels: int) -> np.ndarray:
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.rint(values / high * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    target = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(target), dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize HxWxC uint8 to size x size x C (bilinear with antialiasing)."""
    if array.shape[0] == size and array.shape[1] == size:
        return array
    mode = "L" if array.shape[2] == 1 else "RGB"
    image = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return resized[:, :, None] if resized.ndim == 2 else resized


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]
