"""Reading uploaded images safely: a streaming multipart reader with limits, and the decoder.

BentoML's own multipart handling is not used for uploads, for three reasons found in BentoML 1.4:
a plain string in a file field is fetched server-side as a URL (a server-side request forgery),
a corrupt file sent to a `PIL.Image` parameter gives a 500 (bentoml#4623), and the whole form is
read before anything can be refused. Here a part is refused as soon as its headers arrive: a
file beyond `serve.max_images` (413), a text value where a file belongs (400), a field nobody
asked for (422). File parts are streamed to files in the request's temporary folder.

Images are then judged like the validate stage judges them (`tasks.data.images`: the size from
the header before any pixel is decoded, `data.min_size`, `data.max_pixels`, PIL's own bomb
guard), and made into the model's input by the shared preprocessing (`Preprocessing.pixels`).
Every problem is a :class:`RequestProblem`: its HTTP status and one line naming the image.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

import numpy as np
from bentoml.exceptions import BentoMLException
from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from tasks.data.images import OversizedImage, UndecodableImage, load_converted, probe

NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
NAME_LENGTH = 60  # of a client's file name, as kept in the temporary file's name and messages


class RequestProblem(BentoMLException):
    """A bad request: an HTTP status (4xx, or 503 for overload) and the line the client reads."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message, error_code=status)
        self.status = status


@dataclass(frozen=True)
class ImageRules:
    """What an upload must be: the validate stage's limits and the model's input size."""

    min_size: int  # data.min_size: the smallest side, in pixels
    max_pixels: int  # data.max_pixels: width x height at most
    channels: int  # the model's channels (1 or 3): what to convert to
    pixels: Callable[[Image.Image], np.ndarray]  # the shared preprocessing's first step


@dataclass(frozen=True)
class DecodedImage:
    """One accepted upload: the model's input and what the prediction log records of it."""

    pixels: np.ndarray  # uint8 (C, H, W) at the model's size and channels
    width: int
    height: int
    channels: int  # of the uploaded image (bands of its mode), before conversion
    mean: float  # of the converted pixels (0-255), as validate computes them
    std: float


def safe_name(filename: str) -> str:
    """A client's file name reduced to characters safe in a file name and a message."""
    return NAME_CHARACTERS.sub("_", filename)[:NAME_LENGTH].strip("._") or "upload"


class _PartReader:
    """The multipart callbacks: files of `field` go to `folder`, anything else is refused."""

    def __init__(self, field: str, max_files: int, folder: Path) -> None:
        self.field, self.max_files, self.folder = field, max_files, folder
        self.files: list[Path] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._handle: BinaryIO | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self._disposition = b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("latin-1")
        if kind != b"form-data" or not name:
            raise RequestProblem(
                HTTPStatus.BAD_REQUEST,
                "a multipart part has no Content-Disposition: form-data with a field name",
            )
        if name != self.field:
            raise RequestProblem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                f"unexpected field {safe_name(name)!r}: send the image files in field "
                f"{self.field!r} only",
            )
        if b"filename" not in options:
            raise RequestProblem(
                HTTPStatus.BAD_REQUEST,
                f"field {self.field!r} holds text, not a file: upload the image itself "
                "(URLs and paths are not fetched)",
            )
        if len(self.files) >= self.max_files:
            raise RequestProblem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"more than {self.max_files} image(s) in one request; send at most "
                f"{self.max_files} (serve.max_images)",
            )
        filename = safe_name(options[b"filename"].decode("utf-8", "replace"))
        path = self.folder / f"{len(self.files) + 1:04d}-{filename}"
        self.files.append(path)
        self._handle = open(path, "wb")  # noqa: SIM115 (closed in part_end or close)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            self._handle.write(data[start:end])

    def part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def receive_files(
    content_type: str, body: AsyncIterator[bytes], field: str, max_files: int, folder: Path
) -> list[Path]:
    """Stream a multipart/form-data body; the files of `field` written to `folder`, in order.

    Raises:
        RequestProblem: 415 for another content type, 413 beyond `max_files` files, 422 for a
            missing or unexpected field, 400 for text in the field or a malformed body.
    """
    media, options = parse_options_header(content_type)
    if media != b"multipart/form-data":
        shown = media.decode("latin-1")[:60] or "no content type"
        raise RequestProblem(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"send multipart/form-data with the image files in field {field!r}, not {shown}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestProblem(HTTPStatus.BAD_REQUEST, "multipart/form-data without a boundary")
    reader = _PartReader(field, max_files, folder)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise RequestProblem(
            HTTPStatus.BAD_REQUEST, f"malformed multipart body: {str(error)[:200]}"
        ) from None
    except ClientDisconnect:
        raise RequestProblem(HTTPStatus.BAD_REQUEST, "the request body ended early") from None
    finally:
        reader.close()
    if not reader.files:
        raise RequestProblem(HTTPStatus.UNPROCESSABLE_ENTITY, f"no image file in field {field!r}")
    return reader.files


def _described(path: Path, index: int, count: int) -> str:
    name = path.name.split("-", 1)[-1]
    return f"image {index + 1} of {count} ({name})" if count > 1 else f"the image ({name})"


def decode_image(path: Path, rules: ImageRules, what: str = "the image") -> DecodedImage:
    """Judge and decode one uploaded file as validate would; RequestProblem (400) if refused.

    `what` names the image in messages ("image 2 of 3 (digit.png)").
    """

    def refused(reason: str) -> RequestProblem:
        return RequestProblem(HTTPStatus.BAD_REQUEST, f"{what} {reason}")

    if path.stat().st_size == 0:
        raise refused("is empty")
    # Pillow raises more than the decoder's known errors on crafted files (IndexError, KeyError,
    # TypeError, ZeroDivisionError ...): any failure to read an upload is the upload's fault, a 400
    try:
        width, height, mode, _format = probe(path)  # the header only
    except OversizedImage as error:
        raise refused(f"is too large to open ({error})") from None
    except UndecodableImage as error:
        raise refused(f"is not an image sixfold can decode ({error})") from None
    except Exception as error:
        raise refused(f"is not an image sixfold can decode ({type(error).__name__})") from None
    if width * height > rules.max_pixels:
        raise refused(
            f"is {width}x{height} = {width * height} pixels, more than data.max_pixels = "
            f"{rules.max_pixels}"
        )
    if min(width, height) < rules.min_size:
        raise refused(
            f"is {width}x{height}: its smallest side is under data.min_size = "
            f"{rules.min_size} pixels"
        )
    try:
        array = load_converted(path, rules.channels)
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        pixels = rules.pixels(image)
    except (OversizedImage, UndecodableImage) as error:
        raise refused(f"is not an image sixfold can decode ({error})") from None
    except Exception as error:
        raise refused(f"is not an image sixfold can decode ({type(error).__name__})") from None
    return DecodedImage(
        pixels=pixels,
        width=width,
        height=height,
        channels=Image.getmodebands(mode),
        mean=float(array.mean()),
        std=float(array.std()),
    )


def decode_images(paths: list[Path], rules: ImageRules) -> list[DecodedImage]:
    """Every upload decoded, in order; the first refused one raises its RequestProblem."""
    return [
        decode_image(path, rules, _described(path, index, len(paths)))
        for index, path in enumerate(paths)
    ]
