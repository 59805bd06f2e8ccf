"""Which saved model a service loads, and loading its two parts.

The service (deploy/service.py) runs a model in two processes: the inference process needs only
the ONNX session, the HTTP front the card's classes and preprocessing (to decode uploads and
read the rows) and the network (to explain). Both load a version from the project's store at
start and again at each swap (`tasks.serving.following`), so the loading lives here, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

from tasks.compression.runtime import OnnxClassifier
from tasks.core.config import DataConfig
from tasks.serving.following import FollowPolicy, reload_interval
from tasks.serving.store import MODEL_NAME, ONNX_FILE, TAG_VARIABLE, model_tag, saved_model
from tasks.serving.uploads import ImageRules


def saved_tag(version: str) -> str:
    """The store's tag of a saved champion's version (its registry id)."""
    return f"{MODEL_NAME}:{version}"


def served_tag(service: bentoml.Service) -> str:
    """The model to load: SIXFOLD_MODEL_TAG; else, when a bento is served, the version it was
    built with (its `latest` would be the newest model in the store: maybe a later champion
    than the one the package stage validated); else the latest saved."""
    if os.environ.get(TAG_VARIABLE) or service.bento is None:
        return model_tag()
    built = next(info for info in service.bento.info.services if info.name == service.name)
    return str(built.models[0].tag)


def follow_policy(service: bentoml.Service) -> FollowPolicy:
    """Whether `service` follows the store's latest model: not when SIXFOLD_MODEL_TAG pins one,
    nor when a bento is served (see `tasks.serving.following`)."""
    bento = None if service.bento is None else str(service.bento.tag)
    return FollowPolicy.of(os.environ.get(TAG_VARIABLE) or None, bento, reload_interval())


def load_onnx(tag: str) -> tuple[str, OnnxClassifier]:
    """The saved model `tag`'s version and its ONNX session, on every core the process may use
    (a benchmark pinning the server with taskset gets one thread, not two on one core)."""
    saved = saved_model(tag)
    return str(saved.tag.version), OnnxClassifier(Path(saved.path) / ONNX_FILE, threads=None)


def load_onnx_version(version: str) -> OnnxClassifier:
    return load_onnx(saved_tag(version))[1]


@dataclass(frozen=True)
class FrontModel:
    """The front's part of a saved model: what reads the inference rows (classes), decodes the
    uploads for it (rules) and explains its answers (network, preprocessing)."""

    classes: list[str]
    rules: ImageRules
    network: Any  # torch.nn.Module: torch is imported by the front only
    preprocessing: Any  # tasks.modeling.preprocessing.Preprocessing


def load_front(tag: str, data: DataConfig) -> tuple[str, FrontModel]:
    """The saved model `tag`'s version and the front's part of it; `data`: params.yaml's
    `data` section (the validate stage's size limits apply to uploads too)."""
    from tasks.modeling.artifact import load_model  # torch: the front only

    saved = saved_model(tag)
    network, card = load_model(Path(saved.path))
    preprocessing = card.preprocessing()
    rules = ImageRules(
        min_size=data.min_size,
        max_pixels=data.max_pixels,
        channels=card.channels,
        pixels=preprocessing.pixels,
    )
    return str(saved.tag.version), FrontModel(card.classes, rules, network, preprocessing)


def load_front_version(data: DataConfig, version: str) -> FrontModel:
    return load_front(saved_tag(version), data)[1]
