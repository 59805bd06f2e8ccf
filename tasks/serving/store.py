"""The champion in the project's BentoML model store: what the service loads and the bento packs.

The store lives inside the repository (`Layout.bentoml_home`, models/bentoml), never in the home
folder. BentoML reads BENTOML_HOME once per process, the first time it touches a store, so a
process must have it set before then: subprocesses get it from :func:`bentoml_environment`, and
:func:`save_champion` refuses to write into any other store than the project's.

One BentoML model per champion: name `sixfold-classifier`, version the champion's registry id,
holding the served ONNX file under one name (int8 or fp32, the preprocessing inside it), the
model card and the weights (for explanations).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from tasks.core.errors import UserError, shown
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.registry.store import EntryFiles, champion

MODEL_NAME = "sixfold-classifier"
DEFAULT_TAG = f"{MODEL_NAME}:latest"
TAG_VARIABLE = "SIXFOLD_MODEL_TAG"  # serve another saved version than the latest
ONNX_FILE = "model.onnx"  # the served file, whatever its format (metadata: served_format)
CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


def bentoml_environment(layout: Layout) -> dict[str, str]:
    """What every process that touches BentoML needs in its environment: the project's store
    and no telemetry (nothing here may reach the network)."""
    return {"BENTOML_HOME": str(layout.bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}


def model_tag() -> str:
    """The model the service loads: `sixfold-classifier:latest`, or SIXFOLD_MODEL_TAG."""
    return os.environ.get(TAG_VARIABLE) or DEFAULT_TAG


def saved_model(tag: str) -> bentoml.Model:
    """The saved model `tag` in this process's store (a bento's own, when serving a bento).

    Raises:
        UserError: there is none; the message says how to save one.
    """
    found = _saved(tag)
    if found is None:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise UserError(
            f"no model {tag} in the BentoML store {home}; save the champion first "
            "(the package stage, or tasks.serving.store.save_champion)"
        )
    return found


def check_home(layout: Layout) -> None:
    """Raise UserError unless this process's BENTOML_HOME is the project's store."""
    configured = os.environ.get("BENTOML_HOME")
    if configured is None or Path(configured).resolve() != layout.bentoml_home.resolve():
        raise UserError(
            f"BENTOML_HOME is {configured or 'not set'}, not the project's store "
            f"{shown(layout.bentoml_home)}; set it before BentoML is first used "
            "(tasks.serving.store.bentoml_environment gives the environment to run with)"
        )


def _saved(tag: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(tag)
    except NotFound:
        return None


def _is_latest(model: bentoml.Model) -> bool:
    latest = _saved(DEFAULT_TAG)
    return latest is not None and latest.tag == model.tag


def save_champion(layout: Layout, files: EntryFiles | None = None) -> str:
    """Save the registry's champion (or `files`, a registered model about to become it) into
    the project's BentoML store; returns its tag.

    Saving the champion that is already the latest model does nothing. A champion saved before
    but no longer the latest (a rollback to an earlier champion) is saved again, so that
    `sixfold-classifier:latest`, what the service loads, is the champion.

    Raises:
        UserError: BENTOML_HOME is not the project's store, the registry has no champion or one
            of its files is missing or changed.
    """
    check_home(layout)
    files = files or champion(layout.registry_dir)  # checksums verified
    tag = f"{MODEL_NAME}:{files.entry.id}"
    existing = _saved(tag)
    if existing is not None:
        if _is_latest(existing):
            return tag
        bentoml.models.delete(tag)
    _create(tag, files)
    return tag


def _create(tag: str, files: EntryFiles) -> None:
    entry = files.entry
    metadata = {
        "champion": entry.id,
        "served_format": entry.served_format,
        "classes": list(read_json(files.card)["classes"]),
    }
    labels = {"project": "sixfold", "served_format": entry.served_format}
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for source, name in (
            (files.served_onnx, ONNX_FILE),
            (files.card, CARD_FILE),
            (files.weights, WEIGHTS_FILE),
        ):
            shutil.copyfile(source, model.path_of(name))
