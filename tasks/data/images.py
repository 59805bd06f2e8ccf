"""Decoding images safely and converting any mode to the configured channels.

The size of an image is judged from its header before any pixel is decoded (`probe`), so a
decompression bomb costs a few kilobytes. PIL's own decompression-bomb guard stays on for the
whole process (a service importing this module keeps it): an image over twice PIL's limit
cannot even be opened and is reported as :class:`OversizedImage`; `data.max_pixels` is capped
at PIL's limit by the config, so everything sixfold accepts is also something PIL decodes.

Only what PIL raises for bad bytes becomes :class:`UndecodableImage`: a file that cannot be
opened at all (missing, no permission), a MemoryError, or a bug in sixfold's own conversion
(:func:`to_array`) propagates and stops the stage with its traceback.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# What PIL raises for bad input: the exceptions Pillow's own fuzz tests accept
# (Tests/oss-fuzz/test_fuzzers.py) less MemoryError, plus EOFError and struct.error that some
# plugins let through. UnidentifiedImageError is an OSError. Corrupting and truncating PNG, JPEG,
# GIF, BMP, TIFF (raw, LZW, JPEG), WebP, ICO, PPM, TGA, JPEG 2000 and PCX files (Pillow 13)
# gave only OSError, SyntaxError, ValueError and DecompressionBombError.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    NotImplementedError,
    OverflowError,
)
# Every mode a decoder produces that to_array converts to L and RGB; anything else is refused as
# undecodable, so an error inside the conversion is sixfold's bug, never the file's.
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
    | {"I", "F", "LA", "PA", "I;16", "I;16L", "I;16B", "I;16N"}
)


class UndecodableImage(ValueError):
    """The file is not an image PIL can decode completely."""


class OversizedImage(ValueError):
    """The header declares more pixels than PIL agrees to open (a likely decompression bomb)."""


def probe(path: str | Path) -> tuple[int, int, str, str]:
    """Width, height, mode and format from the header only; no pixel data is decoded."""
    with warnings.catch_warnings():
        # between PIL's limit and twice it PIL only warns; the caller judges the size
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _decoded(path, load=False) as image:
            return image.width, image.height, image.mode, image.format or ""


def load_converted(path: str | Path, channels: int) -> np.ndarray:
    """Decode fully and convert to uint8 HxWxC with C = `channels` (1 or 3).

    Palette, RGBA/LA (composited on white), 16-bit and float grayscale, CMYK and colour vs
    grayscale are all converted rather than rejected.
    """
    with _decoded(path, load=True) as image:
        return to_array(image, channels)  # outside the decoding guard: its errors are bugs


@contextmanager
def _decoded(path: str | Path, load: bool) -> Iterator[Image.Image]:
    """The image at `path`, its pixels decoded when `load`; bad bytes raise UndecodableImage.

    The file is opened here, outside the guard, so a missing or unreadable file is not taken
    for a bad image; what the caller does with the image is outside it too.
    """
    with open(path, "rb") as handle:
        try:
            image = Image.open(handle)
            if load:
                image.load()
        except Image.DecompressionBombError as error:
            raise OversizedImage(_short(error)) from error
        except DECODE_ERRORS as error:
            raise UndecodableImage(_short(error)) from error
        with image:
            yield image


def to_array(image: Image.Image, channels: int) -> np.ndarray:
    """`image` as uint8 HxWxC with C = `channels`; a mode outside CONVERTIBLE_MODES is refused."""
    if image.mode not in CONVERTIBLE_MODES:
        raise UndecodableImage(f"image mode {image.mode} is not supported")
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.rint(values / high * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    if image.mode == "LAB":
        image = image.convert("RGB")  # PIL converts LAB to RGB, not straight to L
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


def _short(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):  # its text names the open file object
        return "UnidentifiedImageError: not an image format PIL can identify"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]
