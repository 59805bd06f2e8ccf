"""Reading the other stages' reports for one section, and saying what is missing and who writes it.

A report page is most needed when something went wrong upstream, so a missing file, a file that
is not valid JSON or a key an older stage did not write never stops the page: the section shows
what is missing and which `dvc.yaml` stage writes it (so the reader knows what to rerun), and
the table of contents marks the section incomplete. The writer of each path is read from
`dvc.yaml` itself, so the advice stays right when a stage is renamed or an output moves.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.core.layout import Layout
from tasks.reporting.html import code, note, png_figure, text

# Files the page reads that Layout does not name. Their writers live in packages that
# tasks.reporting may not import (it sits below them), so the names are repeated here and
# tests/code/test_report.py checks that they agree with the writers'.
REGISTRY_FILE = "registry.json"  # tasks.registry.store: models/registry/registry.json
MONITOR_FOLDER = "monitor"  # tasks.monitoring.report: reports/monitor/<UTC time>.json
MONITOR_STATE = "state.json"  # tasks.monitoring.state: the monitor's state, not a check
CONTINUAL_FOLDER = "continual"  # tasks.continual.report: reports/continual/<version>.json


def dig(data: Any, *keys: str) -> Any:
    """`data[k1][k2]...`, or None when a level is not a mapping or lacks the key."""
    for key in keys:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def mapping(data: Any, *keys: str) -> dict[str, Any]:
    """:func:`dig`, and an empty dict unless the value found is a mapping."""
    found = dig(data, *keys)
    return dict(found) if isinstance(found, Mapping) else {}


def sequence(data: Any, *keys: str) -> list[Any]:
    """:func:`dig`, and an empty list unless the value found is a list."""
    found = dig(data, *keys)
    return found if isinstance(found, list) else []


def label_order(label: object) -> tuple[int, int, str]:
    """Sort key of class labels: numbers by value ("2" before "10"), then names."""
    name = str(label)
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def by_label(mapping: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The (label, value) pairs of a per-class mapping, in :func:`label_order`."""
    return sorted(mapping.items(), key=lambda pair: label_order(pair[0]))


def _declared_paths(stage: Mapping[str, Any]) -> list[str]:
    """The outs, metrics and plots a dvc.yaml stage declares (`path` or `{path: {options}}`)."""
    entries = [*(stage.get("outs") or []), *(stage.get("metrics") or [])]
    entries += stage.get("plots") or []
    return [str(next(iter(entry))) if isinstance(entry, dict) else str(entry) for entry in entries]


def stage_writers(dvc_file: Path) -> dict[str, str]:
    """Every output path declared in `dvc_file` -> the stage that writes it ({} if unreadable)."""
    try:
        stages = yaml.safe_load(dvc_file.read_text()).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return {
        path.rstrip("/"): str(name)
        for name, stage in stages.items()
        if isinstance(stage, Mapping)
        for path in _declared_paths(stage)
    }


@dataclass(frozen=True)
class Writer:
    """Who writes a file that no dvc.yaml stage declares (a flow run after the pipeline), and
    the command that writes it: the advice a note gives when such a file is unusable."""

    name: str  # "the drift monitor"
    command: str  # "make monitor"


class SectionInputs:
    """The report files one section reads, with a record of each one that was not usable.

    Every reader returns None (or a note in place of a figure) instead of raising, and adds one
    line to :attr:`missing`, which :class:`~tasks.reporting.html.Section` carries. The notes
    about unusable JSON and CSV files collect in :attr:`notes`, shown at the top of the section.
    """

    def __init__(self, layout: Layout, writers: Mapping[str, str]) -> None:
        self.layout = layout
        self.writers = writers
        self.missing: list[str] = []
        self.notes: list[str] = []

    def name(self, path: Path) -> str:
        """`path` as the page shows it: relative to the repository."""
        return self.layout.relative(path).as_posix()

    def writer(self, path: Path) -> str | None:
        """The dvc.yaml stage that writes `path` (or the folder that holds it), if declared."""
        name = self.name(path)
        if name in self.writers:
            return self.writers[name]
        folders = [declared for declared in self.writers if name.startswith(declared + "/")]
        return self.writers[max(folders, key=len)] if folders else None

    def _explain(self, what: str, path: Path, after: str = "", writer: Writer | None = None) -> str:
        """Record `what` (plain text) about `path` in :attr:`missing`; the note to show.

        The advice names `writer` when given, else the dvc.yaml stage that writes `path`.
        """
        if writer is not None:
            self.missing.append(f"{what} ({writer.command})")
            writes = f"{text(writer.name)} writes it ({code(writer.command)})"
            return note(f"{text(what)}: {writes}{after}.")
        stage = self.writer(path)
        rerun = f"dvc repro {stage}" if stage else "dvc repro"
        self.missing.append(f"{what} ({rerun})")
        writes = f"the {code(stage)} stage writes it" if stage else "the pipeline writes it"
        return note(f"{text(what)}: {writes} ({code(rerun)}){after}.")

    def absent_file(
        self, path: Path, problem: str = "is missing", writer: Writer | None = None
    ) -> str:
        """Record that `path` is unusable (`problem`, plain text); the note to show in its place."""
        return self._explain(f"{self.name(path)} {problem}", path, writer=writer)

    def absent_key(self, path: Path, key: str, writer: Writer | None = None) -> str:
        """Record that `path` lacks `key` (an older or failed run wrote it); the note to show."""
        source = f"that {'flow' if writer else 'stage'}"
        return self._explain(
            f"{key} is not in {self.name(path)}",
            path,
            f"; the file may come from an older version of {source}",
            writer,
        )

    def json(self, path: Path, writer: Writer | None = None) -> dict[str, Any] | None:
        """The JSON object in `path`; None (and a note) when missing, unreadable or no object.

        `writer`: who writes `path` when no dvc.yaml stage does (for the note's advice).
        """
        if not path.exists():
            self.notes.append(self.absent_file(path, writer=writer))
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problem = f"could not be read ({type(error).__name__}: {error})"
            self.notes.append(self.absent_file(path, problem, writer))
            return None
        if not isinstance(data, dict):
            problem = f"holds a JSON {type(data).__name__}, not an object"
            self.notes.append(self.absent_file(path, problem, writer))
            return None
        return data

    @staticmethod
    def optional_json(path: Path) -> dict[str, Any] | None:
        """The JSON object in `path`, or None, silently: for a cross-check against a file that
        another section reads (and complains about)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def csv_rows(self, path: Path) -> tuple[list[str], list[dict[str, str]]] | None:
        """The header and rows of the CSV file `path`; None (and a note) when missing."""
        if not path.exists():
            self.notes.append(self.absent_file(path))
            return None
        try:
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
                return list(reader.fieldnames or []), rows
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            problem = f"could not be read ({type(error).__name__}: {error})"
            self.notes.append(self.absent_file(path, problem))
            return None

    def figure(self, path: Path, caption: str, writer: Writer | None = None) -> str:
        """`path` inlined as a figure, or a note (recorded) when it is missing or not a PNG."""
        if not path.exists():
            return self.absent_file(path, writer=writer)
        figure = png_figure(path, caption)
        if figure is None:
            return self.absent_file(path, "is not a readable PNG", writer)
        return figure
