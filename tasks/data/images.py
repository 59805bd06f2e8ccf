"""Decoding images safely and converting any mode to the configured channels.

The size of an image is judged from its header before any pixel is decoded (`probe`), so a
decompression bomb costs a few kilobytes. PIL's own decompression-bomb guard stays on for the
whole process (a service importing this module keeps it): an image over twice PIL's limit
cannot even be opened and is reported as :class:`OversizedImage`; `data.max_pixels` is capped
at PIL's limit by the config, so everything sixfold accepts is also something PIL decodes.

Only what PIL raises for bad bytes becomes :class:`UndecodableImage`: a file that cannot be
opened at all (missing, no permission), a MemoryError, or a bug in sixfold's own conversion
(:func:`to_array`) propagates and stops the stage with its traceback.

`data.channels: auto` is resolved here too (:func:`choose_channels`): validate measures each
accepted image's colour while it decodes it anyway (:func:`colour`), the choice is written to
reports/data/validation.json, and the split stage packs at the channels it reads there.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

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

# An image carries colour when its mean chroma (per pixel, the largest channel minus the smallest,
# 0-255) exceeds this many grey levels. Gray pixels saved as RGB measure 0 (PIL's JPEG of a gray
# RGB image decodes to R = G = B exactly, quality 50 to 95), gray with up to 2 levels of noise on
# each channel (a scanner, another encoder) about 2.4, while a photograph measures tens
# (matplotlib's grace_hopper.jpg: 51; 32 px patches of it: 12.7 to 112).
COLOUR_LEVELS = 4.0
# Colour is measured on a box-filtered copy at most this many pixels a side: an average over at
# most 4096 pixels, so a 25-megapixel photograph costs no more to measure than a thumbnail.
COLOUR_SIDE = 64
# `auto` packs RGB when at least this share of the accepted images carries colour. A minority of
# colour images still carries information the network can use (a red class among gray ones), and
# packing three channels for gray images costs memory, not accuracy: the network sees R = G = B.
# 5 % keeps a handful of stray colour files (a logo, a scan with a tint) from tripling the arrays.
COLOUR_SHARE = 0.05


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


def load_conversions(path: str | Path, channels: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Decode once and convert to each of `channels` (uint8 HxWxC arrays), as load_converted."""
    with _decoded(path, load=True) as image:
        return {count: to_array(image, count) for count in channels}


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


def colour(rgb: np.ndarray) -> float:
    """Mean chroma (largest channel minus smallest, 0-255) of an HxWx3 uint8 image, on a copy
    box-filtered to at most COLOUR_SIDE pixels a side; above COLOUR_LEVELS it carries colour."""
    factor = max(1, -(-max(rgb.shape[:2]) // COLOUR_SIDE))
    small = np.asarray(Image.fromarray(rgb, mode="RGB").reduce(factor), dtype=np.int16)
    return float((small.max(axis=2) - small.min(axis=2)).mean())


class ChannelChoice(BaseModel):
    """The channels the data is packed at, and why: `data.channels` resolved on the accepted
    images (reports/data/validation.json's `channels`, read by the split stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requested: Literal[1, 3, "auto"]  # data.channels as params.yaml set it
    channels: Literal[1, 3]
    colour_images: int  # accepted images whose colour is above colour_levels
    accepted: int
    colour_share: float
    colour_levels: float = COLOUR_LEVELS
    share_needed: float = COLOUR_SHARE  # what auto asks of colour_share for RGB
    reason: str


def choose_channels(requested: Literal[1, 3, "auto"], colours: list[float]) -> ChannelChoice:
    """Resolve `data.channels` from the colour (:func:`colour`) of every accepted image: an
    explicit 1 or 3 is kept; auto is 3 when at least COLOUR_SHARE of them carry colour."""
    coloured = sum(value > COLOUR_LEVELS for value in colours)
    share = coloured / len(colours) if colours else 0.0
    figures = f"{coloured:,} of {len(colours):,} accepted images ({share:.1%}) carry colour"
    if requested == "auto":
        channels = 3 if colours and share >= COLOUR_SHARE else 1
        relation = ">=" if channels == 3 else "<"
        reason = f"auto: {figures} ({relation} {COLOUR_SHARE:.0%})"
    else:
        channels = requested
        reason = f"data.channels: {requested} in params.yaml; {figures}"
    return ChannelChoice(
        requested=requested,
        channels=channels,
        colour_images=coloured,
        accepted=len(colours),
        colour_share=share,
        reason=f"{reason} -> {'RGB' if channels == 3 else 'grayscale'}",
    )


def _short(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):  # its text names the open file object
        return "UnidentifiedImageError: not an image format PIL can identify"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]
