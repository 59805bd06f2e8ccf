"""Typed files passed between stages, with a format version checked on load.

A stage that reads another stage's JSON (the packed-data metadata, the model card) reads it as
one of these: a missing or mistyped field, or a file written by another format version, stops
with one line naming the file and what to re-run, never a KeyError three modules later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.core.errors import MissingInput, UserError, shown
from tasks.core.io import write_json


class IncompatibleFile(UserError, ValueError):
    """A stage's output file is from another format version, incomplete or malformed."""


class VersionedFile(BaseModel):
    """A JSON file with `format_version`; subclasses set FORMAT_VERSION and PRODUCER."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    FORMAT_VERSION: ClassVar[int] = 1
    PRODUCER: ClassVar[str] = "the stage that writes it"  # what to re-run when it is unusable

    format_version: int

    @classmethod
    def create(cls, **fields: Any) -> Self:
        return cls(format_version=cls.FORMAT_VERSION, **fields)

    def save(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read and check `path`. Raises MissingInput or IncompatibleFile with one line."""
        name = shown(path)
        if not path.exists():
            raise MissingInput(f"{name} is missing; run {cls.PRODUCER} first (`dvc repro`)")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise IncompatibleFile(
                f"{name}: not valid JSON ({error}); re-run {cls.PRODUCER}"
            ) from None
        if not isinstance(raw, dict):
            raise IncompatibleFile(f"{name}: not a JSON object; re-run {cls.PRODUCER}")
        version = raw.get("format_version")
        if version != cls.FORMAT_VERSION:
            found = "no format_version" if version is None else f"format version {version!r}"
            raise IncompatibleFile(
                f"{name}: {found}, this sixfold reads version {cls.FORMAT_VERSION}; "
                f"re-run {cls.PRODUCER} (`dvc repro`)"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or '(top)'}: {item['msg'].lower()}"
                for item in error.errors()[:3]
            )
            raise IncompatibleFile(
                f"{name}: incomplete or malformed ({problems}); re-run {cls.PRODUCER}"
            ) from None
