"""One fingerprint helper, and the resume state built on it.

A fingerprint is a short sha256 of a canonical JSON payload (settings, a listing) and,
optionally, the bytes of files. It answers "is this the same work as before?": the train stage
resumes a checkpoint and the tune stage restores a search only when the fingerprint of their
params and data matches the one recorded when the interrupted run started; the model card
records the fingerprint of the params it was trained with; the source step records one of the
source's listing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import Params
from tasks.core.io import read_json, write_json
from tasks.core.layout import Layout

LENGTH = 24  # hex digits kept: 96 bits, no accidental collision among a project's runs
_CHUNK = 1 << 22


def fingerprint(payload: Any, files: Iterable[Path] = (), length: int = LENGTH) -> str:
    """sha256 of `payload` as key-sorted JSON, then of each file's bytes in the given order."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:length]


def files_in(*folders: Path) -> list[Path]:
    """Every file directly inside `folders`, sorted within each folder (missing folders: none)."""
    return [
        path
        for folder in folders
        if folder.exists()
        for path in sorted(folder.iterdir())
        if path.is_file()
    ]


def params_fingerprint(params: Params) -> str:
    """The fingerprint of a full set of params (the model card records it)."""
    return fingerprint(params.model_dump(mode="json"))


def training_fingerprint(params: Params, layout: Layout) -> str:
    """What an interrupted training or search must match to resume: the params and the exact
    training data (packed and augmented arrays)."""
    return fingerprint(
        params.model_dump(mode="json"), files_in(layout.packed_dir, layout.augmented_dir)
    )


@dataclass(frozen=True)
class ResumeState:
    """`state.json` beside an interruptible run's files: its fingerprint and whether it finished.

    A run resumes only from state that has the same fingerprint and is not complete; anything
    else starts over.
    """

    path: Path

    def matches_unfinished(self, key: str) -> bool:
        """True when the recorded run is this work (`key`) and did not complete."""
        state = read_json(self.path) if self.path.exists() else {}
        return state.get("fingerprint") == key and not state.get("complete")

    def start(self, key: str) -> None:
        write_json(self.path, {"fingerprint": key, "complete": False})

    def finish(self, key: str) -> None:
        write_json(self.path, {"fingerprint": key, "complete": True})
