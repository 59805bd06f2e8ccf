"""What the service saw: the prediction log's records since a time, as a sample for the tests.

The service's workers each write `<serve.log_dir>/predictions-<worker>.jsonl`, rotated into
`.jsonl.1` ... `.jsonl.<serve.log_backups>` (`tasks.serving.logbook`); every one of those files
is read and the records newer than `since` kept, whichever file rotation moved them to. A line
that is not a complete record (a write cut short by a full disk, a record of another format) is
counted and left out, never fatal: the log is best-effort by design.

A record's image statistics (mean, std, width, height) describe the upload whatever model served
it; its label, confidence and embedding are the serving model's, so only the records of the
champion (`model_version` = its registry id) are compared with the champion's reference.
The embedding (`EMBEDDING_FIELD`, the penultimate layer's activations, which the service logs
when its ONNX file has the output) is optional: without it the MMD test is skipped.

When the newest record comes from another model than the champion, the server is not serving
the champion (pinned, a bento left running, or a new model that failed to load): the model
tests then have few or no records to judge, and :func:`served_model_problem` says so first.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.monitoring.drift import IMAGE_FEATURES, Sample
from tasks.serving.logbook import EMBEDDING_FIELD

LOG_FILE = re.compile(r"predictions-.+\.jsonl(\.\d+)?")  # a worker's log and its rotations
REQUIRED_FIELDS = ("time", "model_version", "label", "confidence", *IMAGE_FEATURES)


@dataclass(frozen=True)
class Record:
    """One logged prediction, as the tests need it."""

    time: datetime
    model_version: str
    label: str
    confidence: float
    features: dict[str, float]
    embedding: list[float] | None


@dataclass(frozen=True)
class ServedLog:
    """The records newer than `since` (oldest first) and what could not be read."""

    records: list[Record]
    since: datetime | None
    files: int
    unreadable: int  # lines that are not a complete record
    versions: dict[str, int] = field(default_factory=dict)  # model_version -> records

    @property
    def until(self) -> datetime | None:
        """The time of the newest record read (where the next check starts)."""
        return self.records[-1].time if self.records else None

    @property
    def served_version(self) -> str | None:
        """The model_version of the newest record: the model the service answered with last."""
        return self.records[-1].model_version if self.records else None


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC (the log's own are UTC).

    Raises:
        ValueError: `text` is not an ISO 8601 time.
    """
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def log_files(folder: Path) -> list[Path]:
    """Every worker's log file and rotated copy in `folder` (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if LOG_FILE.fullmatch(path.name))


def parse_record(line: str) -> Record | None:
    """The record on one log line, or None when the line is not a complete record."""
    try:
        raw: Any = json.loads(line)
        if not isinstance(raw, dict) or any(key not in raw for key in REQUIRED_FIELDS):
            return None
        embedding = raw.get(EMBEDDING_FIELD)
        if embedding is not None:
            embedding = [float(value) for value in embedding]
        return Record(
            time=parse_time(str(raw["time"])),
            model_version=str(raw["model_version"]),
            label=str(raw["label"]),
            confidence=float(raw["confidence"]),
            features={name: float(raw[name]) for name in IMAGE_FEATURES},
            embedding=embedding or None,
        )
    except (ValueError, TypeError):  # bad JSON (a cut line), a bad time or number
        return None


def read_log(folder: Path, since: datetime | None) -> ServedLog:
    """The records in `folder`'s log files that are newer than `since` (all when None)."""
    records: list[Record] = []
    unreadable = 0
    files = log_files(folder)
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                record = parse_record(line)
                if record is None:
                    unreadable += 1
                elif since is None or record.time > since:
                    records.append(record)
    records.sort(key=lambda record: record.time)
    versions = dict(Counter(record.model_version for record in records))
    return ServedLog(records, since, len(files), unreadable, versions)


def served_sample(log: ServedLog, champion: str) -> Sample:
    """The log as a drift-test sample: image statistics of every record; labels, confidences
    and embeddings of the champion's records (embeddings of those that carry one of the usual
    length, None when none does)."""
    records = log.records
    features = {
        name: np.array([record.features[name] for record in records], dtype=np.float64)
        for name in IMAGE_FEATURES
    }
    own = [record for record in records if record.model_version == champion]
    embedded = [record.embedding for record in own if record.embedding is not None]
    embeddings = None
    if embedded:
        length = Counter(map(len, embedded)).most_common(1)[0][0]
        embeddings = np.array([e for e in embedded if len(e) == length], dtype=np.float64)
    return Sample(
        features=features,
        labels=np.array([record.label for record in own], dtype=str),
        confidences=np.array([record.confidence for record in own], dtype=np.float64),
        embeddings=embeddings,
    )


def served_model_problem(log: ServedLog, champion: str) -> str | None:
    """'served model is not the champion: ...' when the newest record comes from another model
    than `champion` (the registry's); None when it is the champion's, or there is no record."""
    served = log.served_version
    if served is None or not champion or served == champion:
        return None
    own = log.versions.get(champion, 0)
    return (
        f"served model is not the champion: the newest record comes from model {served}, the "
        f"champion is {champion} ({own} of {len(log.records)} record(s) are the champion's, "
        "and only those are judged by the model tests); the server is pinned "
        "(SIXFOLD_MODEL_TAG), serves an old bento, or could not load the champion: GET /model "
        "on the server says which"
    )
