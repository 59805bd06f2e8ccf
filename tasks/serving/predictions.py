"""The response of POST /predict: one prediction per image, in the order the images came.

Typed with pydantic so BentoML documents the response in the OpenAPI schema from the same
classes the service returns.
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
