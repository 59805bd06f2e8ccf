"""The BentoML service that serves the champion: `bentoml serve deploy.service:Classifier`.

Run from the repository root with BENTOML_HOME set to the project's store (`make serve` does),
after the package stage (or `tasks.serving.store.save_champion`) saved the champion into it.

Two BentoML services, as BentoML documents adaptive batching for an API whose requests carry
something other than one batchable argument:
- `Classifier`, the HTTP front: reads and validates the uploads (`tasks.serving.uploads`),
  answers POST /predict and POST /explain, logs predictions, counts them in /metrics; behind
  `tasks.serving.guard` (API key, body size, error shape, documented errors);
- `Inference`, its dependency: the ONNX model (onnxruntime) behind one batchable API. BentoML
  runs it in its own process on a Unix socket, reachable only from the front, and its batching
  dispatcher gathers the images of concurrent /predict requests into one session run
  (serve.max_batch_size images, serve.max_latency_ms: beyond it BentoML answers 503, which the
  front passes on). SIXFOLD_SERVE_BATCHING=off serves the same way without the dispatcher.

Settings come from params.yaml's `serve` section and `data.min_size`/`data.max_pixels` (the
validate stage's limits); SIXFOLD_MODEL_TAG serves another saved version than the latest,
SIXFOLD_API_KEY turns on the key, SIXFOLD_LOG_DIR moves the prediction log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from tasks.compression.runtime import OnnxClassifier
from tasks.core.config import load_params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.serving.guard import RequestGuard, api_key_from_environment, upload_errors
from tasks.serving.logbook import PredictionLog, log_folder, prediction_record
from tasks.serving.metrics import serving_metrics
from tasks.serving.predictions import (
    Predictions,
    joined_outputs,
    split_outputs,
    to_predictions,
)
from tasks.serving.store import ONNX_FILE, TAG_VARIABLE, model_tag, saved_model
from tasks.serving.uploads import ImageRules, decode_images, receive_files

BATCHING_VARIABLE = "SIXFOLD_SERVE_BATCHING"
OVERLOADED = {HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS}


def batching_enabled() -> bool:
    """SIXFOLD_SERVE_BATCHING: `on` (the default) or `off`."""
    value = os.environ.get(BATCHING_VARIABLE, "on").strip().lower()
    if value not in {"on", "off"}:
        raise UserError(f"{BATCHING_VARIABLE} must be on or off, got {value!r}")
    return value == "on"


def served_tag(service: bentoml.Service) -> str:
    """The model to load: SIXFOLD_MODEL_TAG; else, when a bento is served, the version it was
    built with (its `latest` would be the newest model in the store: maybe a later champion
    than the one the package stage validated); else the latest saved."""
    if os.environ.get(TAG_VARIABLE) or service.bento is None:
        return model_tag()
    built = next(info for info in service.bento.info.services if info.name == service.name)
    return str(built.models[0].tag)


class _Refusals(logging.Filter):
    """Drops BentoML's traceback of a request refused on purpose: a 4xx, or a 503 when the
    batching dispatcher predicts a missed latency budget (logging a traceback for each would
    add work exactly when the server is overloaded). The access log keeps every status."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, BentoMLException):
            return True
        return not (400 <= error.error_code < 500 or error.error_code in OVERLOADED)


def quiet_refusals() -> None:
    """Install :class:`_Refusals` on the logger of BentoML's request handler (once)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(existing, _Refusals) for existing in logger.filters):
        logger.addFilter(_Refusals())


LAYOUT = Layout.discover()  # the repository, or the bento's folder when a bento is served
PARAMS = load_params(LAYOUT.params_file)
SERVE = PARAMS.serve
BATCHING = batching_enabled() and SERVE.max_batch_size > 1  # BentoML batches 2 at least


# BentoML 1.4.40's client to a dependency replaces its connection pool every 100 requests or
# 300 s by closing the old one under the requests still in flight, which then fail with
# "Server disconnected" (measured: 52 of 400 requests at 16 clients; bentoml#5540). The front
# talks to one local process over a Unix socket: nothing to gain from recycling, so it never is.
NEVER_RECYCLED = {"max_requests": 2**62, "max_age": 1e15}


@bentoml.service(workers=1, runner_connection=NEVER_RECYCLED)
class Inference:
    """The served ONNX model (int8 or fp32, preprocessing inside): uint8 images -> probabilities,
    each row followed by the image's embedding when the file has that output (one array, so
    BentoML's batching splits it as before; `tasks.serving.predictions.split_outputs`)."""

    model = bentoml.models.BentoModel(model_tag())  # declared: `bentoml build` records it

    def __init__(self) -> None:
        # every core the process may use: a benchmark pinning the server with taskset gets
        # one thread, not two spinning on one core
        folder = Path(saved_model(served_tag(Inference)).path)
        self.classifier = OnnxClassifier(folder / ONNX_FILE, threads=None)
        quiet_refusals()

    @bentoml.api(
        batchable=BATCHING,
        max_batch_size=max(2, SERVE.max_batch_size),
        max_latency_ms=SERVE.max_latency_ms,
    )
    def classify(self, images: np.ndarray) -> np.ndarray:
        return joined_outputs(*self.classifier.outputs(images))


class ImageFiles(bentoml.IODescriptor):
    """multipart/form-data: 1..serve.max_images image files in field `images`."""

    images: list[Annotated[Path, ContentType("image/*")]] = Field(
        description=f"1 to {SERVE.max_images} image files (PNG, JPEG, ...), answered in order"
    )

    @classmethod
    async def from_http_request(cls, request: Request, serde: object) -> ImageFiles:
        folder = Path(Classifier.context.temp_dir)  # emptied when the request ends
        content_type = request.headers.get("content-type", "")
        files = await receive_files(
            content_type, request.stream(), "images", SERVE.max_images, folder
        )
        return cls.model_construct(images=files)  # paths of files written here: nothing to check


class ImageFile(bentoml.IODescriptor):
    """multipart/form-data: one image file in field `image`."""

    image: Annotated[Path, ContentType("image/*")] = Field(description="one image file")

    @classmethod
    async def from_http_request(cls, request: Request, serde: object) -> ImageFile:
        folder = Path(Classifier.context.temp_dir)
        content_type = request.headers.get("content-type", "")
        files = await receive_files(content_type, request.stream(), "image", 1, folder)
        return cls.model_construct(image=files[0])


@bentoml.service(
    workers=SERVE.workers,
    traffic={"max_concurrency": SERVE.max_concurrency},
    http={"host": SERVE.host, "port": SERVE.port},
)
class Classifier:
    """sixfold's image classifier: POST /predict (labels and probabilities), POST /explain
    (an Integrated Gradients overlay as PNG)."""

    model = bentoml.models.BentoModel(model_tag())
    inference = bentoml.depends(Inference)

    def __init__(self) -> None:
        # torch only here: the inference process runs the ONNX file without it
        from tasks.explaining.grids import overlay_png
        from tasks.modeling.artifact import load_model

        saved = saved_model(served_tag(Classifier))
        self.network, card = load_model(Path(saved.path))
        self.preprocessing = card.preprocessing()
        self.overlay_png = overlay_png
        self.classes, self.version = card.classes, str(saved.tag.version)
        self.rules = ImageRules(
            min_size=PARAMS.data.min_size,
            max_pixels=PARAMS.data.max_pixels,
            channels=card.channels,
            pixels=self.preprocessing.pixels,
        )
        self.metrics = serving_metrics()
        worker = bentoml.server_context.worker_index or os.getpid()
        self.log = PredictionLog(
            log_folder(LAYOUT.root, SERVE.log_dir),
            stem=f"predictions-{worker}",
            max_bytes=int(SERVE.log_max_mb * 1_000_000),
            backups=SERVE.log_backups,
            on_drop=self.metrics.count_dropped,
        )
        quiet_refusals()

    @bentoml.api(route="/predict", input_spec=ImageFiles, output_spec=Predictions)
    async def predict(self, images: list[Path]) -> Predictions | JSONResponse:
        """Classify 1..serve.max_images images; one prediction each, in upload order."""
        decoded = await asyncio.to_thread(decode_images, images, self.rules)
        batch = np.stack([image.pixels for image in decoded])
        try:
            outputs = await self.inference.to_async.classify(batch)
        except BentoMLException as error:
            if error.error_code not in OVERLOADED:
                raise
            message = f"overloaded: try again later (serve.max_latency_ms = {SERVE.max_latency_ms})"
            return JSONResponse({"error": message}, status_code=503)
        probabilities, embeddings = split_outputs(np.asarray(outputs), self.classes)
        served = to_predictions(probabilities, self.classes)
        self.metrics.observe(served)
        per_image = [None] * len(decoded) if embeddings is None else list(embeddings)
        self.log.append(
            prediction_record(image, prediction, self.version, embedding)
            for image, prediction, embedding in zip(
                decoded, served.predictions, per_image, strict=True
            )
        )
        return served

    @bentoml.api(route="/explain", input_spec=ImageFile)
    def explain(
        self, image: Path, ctx: bentoml.Context
    ) -> Annotated[Path, ContentType("image/png")]:
        """The image beside its Integrated Gradients overlay for the predicted class (PNG)."""
        (decoded,) = decode_images([image], self.rules)
        path = Path(ctx.temp_dir) / "explanation.png"
        path.write_bytes(self.overlay_png(self.network, self.preprocessing, decoded.pixels))
        return path

    @bentoml.on_shutdown
    def close_log(self) -> None:
        self.log.close()


Classifier.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=int(SERVE.max_request_mb * 1_000_000),
    api_key=api_key_from_environment(),
    errors={
        "/predict": upload_errors("images", SERVE.max_images, SERVE.max_request_mb),
        "/explain": upload_errors("image", 1, SERVE.max_request_mb),
    },
)
