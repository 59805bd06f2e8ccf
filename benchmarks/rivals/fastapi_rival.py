"""The rival of `benchmarks.serve_load`: the FastAPI endpoint a competent user writes by hand.

Run by the benchmark as ``uvicorn benchmarks.rivals.fastapi_rival:app --workers 1`` with
``SIXFOLD_RIVAL_MODEL`` naming a folder that holds `model.onnx` and `model.json`: the BentoML
store's copy of the champion, so the rival serves the very file the service serves.

What makes it the fair "by hand" baseline rather than a straw man: the model is loaded once
(in the lifespan), the same onnxruntime session settings (`OnnxClassifier`), the same shared
preprocessing (`card.preprocessing().pixels`), images decoded with PIL. The endpoint is an
`async def` that runs the model inline, one request at a time: on the one core the benchmark
gives it, that beat the plain `def` endpoint FastAPI runs in its thread pool (1585 against 1149
requests/s, 32 hey clients, 5 s each; the pool's thread switches cost more than they overlap),
so the rival is the faster of the two ways people write it. What it lacks is what sixfold's
service adds: each request runs the model on its own images only (no batching across
requests), and none of the hardening (size checks before decoding, logging, metrics).

The contract is the service's: POST /predict, multipart field `images` (one or more files) ->
{"predictions": [{"label", "confidence", "probabilities": {label: p}}]} in input order.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from PIL import Image

from tasks.compression.runtime import OnnxClassifier
from tasks.modeling.artifact import ModelCard
from tasks.modeling.preprocessing import Preprocessing

MODEL_ENV = "SIXFOLD_RIVAL_MODEL"
ONNX_FILE = "model.onnx"
CARD_FILE = "model.json"
# what PIL raises for bytes that are not an image it can decode
PIL_ERRORS = (OSError, SyntaxError, ValueError)


@dataclass(frozen=True)
class LoadedModel:
    classifier: OnnxClassifier
    preprocessing: Preprocessing
    classes: list[str]


def load(folder: Path) -> LoadedModel:
    """The ONNX model and its card's preprocessing from `folder` (the served files)."""
    card = ModelCard.load(folder / CARD_FILE)
    return LoadedModel(OnnxClassifier(folder / ONNX_FILE), card.preprocessing(), card.classes)


@asynccontextmanager
async def lifespan(application: FastAPI) -> AsyncIterator[None]:
    folder = os.environ.get(MODEL_ENV)
    if not folder:
        raise RuntimeError(f"set {MODEL_ENV} to the folder holding {ONNX_FILE} and {CARD_FILE}")
    application.state.model = load(Path(folder))
    yield


app = FastAPI(title="sixfold FastAPI rival", lifespan=lifespan)


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
async def predict(request: Request, images: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
    model: LoadedModel = request.app.state.model
    pixels = []
    for upload in images:
        try:
            with Image.open(io.BytesIO(await upload.read())) as image:
                pixels.append(model.preprocessing.pixels(image))
        except PIL_ERRORS as error:
            problem = f"{upload.filename}: not a decodable image ({error})"
            raise HTTPException(400, problem) from None
    probabilities = model.classifier.probabilities(np.stack(pixels))
    return {"predictions": [prediction(row, model.classes) for row in probabilities]}


def prediction(probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    best = int(probabilities.argmax())
    return {
        "label": classes[best],
        "confidence": float(probabilities[best]),
        "probabilities": {label: float(p) for label, p in zip(classes, probabilities, strict=True)},
    }
