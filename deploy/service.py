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

Both follow the champion (`tasks.serving.following`): every SIXFOLD_RELOAD_S seconds (default
2) the inference process looks for a newer `sixfold-classifier:latest` in the store, loads it
and swaps; each row it returns carries the generation of the model that computed it, and the
front takes up that model (classes, version, network) from the answer itself, so a request
finishes on one model and is logged with its version. GET /model, and /metrics
(`sixfold_model_info`, `sixfold_served_is_champion`), say which version is served and which is
the registry's champion; /predict answers carry the version in the X-Sixfold-Model-Version
header.

Settings come from params.yaml's `serve` section and `data.min_size`/`data.max_pixels` (the
validate stage's limits); SIXFOLD_MODEL_TAG pins another saved version than the latest (not
followed, as a served bento is not), SIXFOLD_API_KEY turns on the key, SIXFOLD_LOG_DIR moves
the prediction log, SIXFOLD_RELOAD_S sets how often the store is looked at.
"""

from __future__ import annotations

import asyncio
import functools
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasks.compression.runtime import OnnxClassifier
from tasks.core.config import load_params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.registry.store import REGISTRY_FILE
from tasks.serving.following import (
    Adopter,
    Holder,
    Loaded,
    StoreFollower,
    first_generation,
    keep_checking,
    latest_saved_version,
    model_log,
    on_one_model,
    with_generation,
)
from tasks.serving.guard import RequestGuard, api_key_from_environment, upload_errors
from tasks.serving.loading import (
    FrontModel,
    follow_policy,
    load_front,
    load_front_version,
    load_onnx,
    load_onnx_version,
    served_tag,
)
from tasks.serving.logbook import PredictionLog, log_folder, prediction_record
from tasks.serving.metrics import serving_metrics
from tasks.serving.model_status import ChampionWatch, ModelStatus, model_metrics
from tasks.serving.predictions import (
    Predictions,
    joined_outputs,
    split_outputs,
    to_predictions,
)
from tasks.serving.store import DEFAULT_TAG, model_tag
from tasks.serving.uploads import DecodedImage, decode_images, receive_files

BATCHING_VARIABLE = "SIXFOLD_SERVE_BATCHING"
OVERLOADED = {HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS}
VERSION_HEADER = "X-Sixfold-Model-Version"  # on every /predict answer: the model that answered


def batching_enabled() -> bool:
    """SIXFOLD_SERVE_BATCHING: `on` (the default) or `off`."""
    value = os.environ.get(BATCHING_VARIABLE, "on").strip().lower()
    if value not in {"on", "off"}:
        raise UserError(f"{BATCHING_VARIABLE} must be on or off, got {value!r}")
    return value == "on"


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
    each row followed by the image's embedding when the file has that output and, last, the
    generation of the model that computed it (one array, so BentoML's batching splits it as
    before; `tasks.serving.predictions.split_outputs`, `tasks.serving.following`)."""

    model = bentoml.models.BentoModel(model_tag())  # declared: `bentoml build` records it

    def __init__(self) -> None:
        self.policy = follow_policy(Inference)
        version, session = load_onnx(served_tag(Inference))
        self.models: Holder[OnnxClassifier] = Holder(version, session, first_generation())
        self.follower = StoreFollower(
            self.models, functools.partial(latest_saved_version, DEFAULT_TAG), load_onnx_version
        )
        self.watch: asyncio.Task[None] | None = None
        quiet_refusals()

    @bentoml.on_startup
    async def start_following(self) -> None:
        model_log().info(
            "sixfold: serving model %s; %s", self.models.current.version, self.policy.reason
        )
        if self.policy.follows:
            checking = keep_checking(self.follower.check, self.policy.interval_s)
            self.watch = asyncio.create_task(checking)

    @bentoml.on_shutdown
    def stop_following(self) -> None:
        if self.watch is not None:
            self.watch.cancel()

    @bentoml.api(
        batchable=BATCHING,
        max_batch_size=max(2, SERVE.max_batch_size),
        max_latency_ms=SERVE.max_latency_ms,
    )
    def classify(self, images: np.ndarray) -> np.ndarray:
        served = self.models.current  # once: the whole batch runs on this model
        assert served.generation is not None  # the inference process numbers every model
        return with_generation(joined_outputs(*served.model.outputs(images)), served.generation)

    @bentoml.api
    def generations(self) -> dict[str, str]:
        """Model generation (as text: JSON keys) -> version, of every model this process
        installed; the highest is the one answering now."""
        return {str(generation): version for generation, version in self.models.generations.items()}


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

        self.policy = follow_policy(Classifier)
        version, front = load_front(served_tag(Classifier), PARAMS.data)
        load = functools.partial(load_front_version, PARAMS.data)
        self.models = Adopter(version, front, load, self.inference_generations)
        self.champions = ChampionWatch(LAYOUT.registry_dir / REGISTRY_FILE)
        self.status: ModelStatus | None = None
        self.watch: asyncio.Task[None] | None = None
        self.overlay_png = overlay_png
        self.metrics = serving_metrics()
        self.model_metrics = model_metrics()
        worker = bentoml.server_context.worker_index or os.getpid()
        self.log = PredictionLog(
            log_folder(LAYOUT.root, SERVE.log_dir),
            stem=f"predictions-{worker}",
            max_bytes=int(SERVE.log_max_mb * 1_000_000),
            backups=SERVE.log_backups,
            on_drop=self.metrics.count_dropped,
        )
        quiet_refusals()

    async def inference_generations(self) -> dict[int, str]:
        table = await self.inference.to_async.generations()
        return {int(generation): str(version) for generation, version in table.items()}

    def model_status(self) -> ModelStatus:
        """The served version, the registry's champion and the follow policy, now."""
        served = self.models.current.version
        return ModelStatus(
            served, self.champions.champion(), self.policy.follows, self.policy.reason
        )

    def show_status(self) -> ModelStatus:
        """Refresh the model gauges at /metrics; the status shown."""
        status = self.model_status()
        self.model_metrics.show(status, self.status)
        self.status = status
        return status

    async def look(self) -> None:
        """The periodic look: take up the inference process's model even when no /predict
        comes (for /explain, GET /model and /metrics), and re-read the champion. The inference
        process is asked only while the store holds another model than the front's (a file
        read otherwise: no internal request, nor access log line, every few seconds)."""
        if self.policy.follows:
            latest = await asyncio.to_thread(latest_saved_version, DEFAULT_TAG)
            if latest is not None and latest != self.models.current.version:
                await self.models.check()
        self.show_status()

    @bentoml.on_startup
    async def start_following(self) -> None:
        self.show_status()
        model_log().info(
            "sixfold: serving model %s; %s", self.models.current.version, self.policy.reason
        )
        # even a pinned model is looked at: its gauges must show a promotion it does not follow
        self.watch = asyncio.create_task(keep_checking(self.look, self.policy.interval_s))

    async def decode_and_classify(
        self, images: list[Path], served: Loaded[FrontModel]
    ) -> tuple[list[DecodedImage], np.ndarray]:
        """Decode `images` for the front's model `served` and classify them: the decoded images
        and the inference rows (with the generation that computed them)."""
        decoded = await asyncio.to_thread(decode_images, images, served.model.rules)
        batch = np.stack([image.pixels for image in decoded])
        return decoded, np.asarray(await self.inference.to_async.classify(batch))

    @bentoml.api(route="/predict", input_spec=ImageFiles, output_spec=Predictions)
    async def predict(self, images: list[Path], ctx: bentoml.Context) -> Predictions | JSONResponse:
        """Classify 1..serve.max_images images; one prediction each, in upload order."""
        try:
            answered = await on_one_model(
                self.models, functools.partial(self.decode_and_classify, images)
            )
        except BentoMLException as error:
            if error.error_code not in OVERLOADED:
                raise
            message = f"overloaded: try again later (serve.max_latency_ms = {SERVE.max_latency_ms})"
            return unavailable(ctx, message)
        if answered is None:
            return unavailable(ctx, "the served model changed while the request ran: try again")
        served, decoded, rows = answered
        probabilities, embeddings = split_outputs(rows, served.model.classes)
        predictions = to_predictions(probabilities, served.model.classes)
        self.metrics.observe(predictions)
        per_image = [None] * len(decoded) if embeddings is None else list(embeddings)
        self.log.append(
            prediction_record(image, prediction, served.version, embedding)
            for image, prediction, embedding in zip(
                decoded, predictions.predictions, per_image, strict=True
            )
        )
        ctx.response.headers[VERSION_HEADER] = served.version
        return predictions

    @bentoml.api(route="/explain", input_spec=ImageFile)
    def explain(
        self, image: Path, ctx: bentoml.Context
    ) -> Annotated[Path, ContentType("image/png")]:
        """The image beside its Integrated Gradients overlay for the predicted class (PNG)."""
        served = self.models.current
        (decoded,) = decode_images([image], served.model.rules)
        path = Path(ctx.temp_dir) / "explanation.png"
        overlay = self.overlay_png(served.model.network, served.model.preprocessing, decoded.pixels)
        path.write_bytes(overlay)
        ctx.response.headers[VERSION_HEADER] = served.version
        return path

    @bentoml.on_shutdown
    def stop_following(self) -> None:
        if self.watch is not None:
            self.watch.cancel()

    @bentoml.on_shutdown
    def close_log(self) -> None:
        self.log.close()


def unavailable(ctx: bentoml.Context, message: str) -> JSONResponse:
    """A 503 with a JSON error. An api that takes `ctx` gets ctx's status on whatever it
    returns (BentoML 1.4 sets it on a returned Response too): both say 503."""
    ctx.response.status_code = HTTPStatus.SERVICE_UNAVAILABLE
    return JSONResponse({"error": message}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)


async def model_endpoint(request: Request) -> JSONResponse:
    """GET /model: the served version, the registry's champion, whether the service follows it."""
    service: Classifier = bentoml.get_current_service()
    return JSONResponse(service.model_status().as_json())


# GET, which a BentoML api (always POST) cannot be; mounted at the root, it matches /model only
Classifier.mount_asgi_app(Starlette(routes=[Route("/model", model_endpoint)]), path="/")


Classifier.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=int(SERVE.max_request_mb * 1_000_000),
    api_key=api_key_from_environment(),
    errors={
        "/predict": upload_errors("images", SERVE.max_images, SERVE.max_request_mb),
        "/explain": upload_errors("image", 1, SERVE.max_request_mb),
    },
)
