"""The errors sixfold shows as one line instead of a traceback.

A :class:`UserError` is a problem with the user's data, settings or files, already phrased as
the line to show (what is wrong and what to do). The stage runner (`tasks.core.runner`) prints
it and exits 1 (2 for a :class:`ConfigError`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A problem with the user's data, settings or files, phrased as the line to show."""


class ConfigError(UserError, ValueError):
    """A problem in params.yaml (or an override of it), naming the key."""


class MissingInput(UserError, FileNotFoundError):
    """An upstream stage's output is not there (the stage was run out of order)."""


def shown(path: str | Path) -> str:
    """`path` as a message shows it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def shown_values(values: Mapping[str, Any]) -> str:
    """`{"train.lr": 0.00482, "model.width": 32}` as a message shows it: `train.lr=0.00482,
    model.width=32` (floats to 4 significant digits)."""
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in values.items()
    )


def require(*paths: str | Path) -> None:
    """Raise MissingInput naming the first of `paths` that does not exist."""
    for path in paths:
        if not Path(path).exists():
            raise MissingInput(
                f"{shown(path)} is missing; run the stages before this one first (`dvc repro`)"
            )
