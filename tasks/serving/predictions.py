"""The response of POST /predict: one prediction per image, in the order the images came.

Typed with pydantic so BentoML documents the response in the OpenAPI schema from the same
classes the service returns.

The service's inference process hands the front one array per batch (what BentoML's batching
splits and gathers): the probabilities, followed on each row by the image's embedding when the
served ONNX file has one (:func:`joined_outputs`, :func:`split_outputs`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="the most probable class")
    confidence: float = Field(description="its probability (0 to 1)")
    probabilities: dict[str, float] = Field(description="every class's probability")


class Predictions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    predictions: list[Prediction] = Field(description="one per uploaded image, in upload order")


def joined_outputs(probabilities: np.ndarray, embeddings: np.ndarray | None) -> np.ndarray:
    """(N, classes) probabilities and (N, D) embeddings as one (N, classes + D) array; the
    probabilities alone when there are no embeddings."""
    if embeddings is None:
        return probabilities
    return np.concatenate([probabilities, embeddings.astype(probabilities.dtype)], axis=1)


def split_outputs(outputs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The inverse of :func:`joined_outputs`: (probabilities, embeddings or None)."""
    if outputs.ndim != 2 or outputs.shape[1] < len(classes):
        raise ValueError(
            f"the model returned outputs of shape {outputs.shape} for {len(classes)} classes"
        )
    if outputs.shape[1] == len(classes):
        return outputs, None
    return outputs[:, : len(classes)], outputs[:, len(classes) :]


def to_predictions(probabilities: np.ndarray, classes: list[str]) -> Predictions:
    """(N, classes) probabilities -> the response (the first class wins a tie, as argmax)."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(
            f"the model returned probabilities of shape {probabilities.shape} for "
            f"{len(classes)} classes"
        )
    winners = probabilities.argmax(axis=1)
    return Predictions(
        predictions=[
            Prediction(
                label=classes[int(winner)],
                confidence=float(row[winner]),
                probabilities=dict(zip(classes, map(float, row), strict=True)),
            )
            for row, winner in zip(probabilities, winners, strict=True)
        ]
    )
