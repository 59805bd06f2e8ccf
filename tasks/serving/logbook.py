"""The prediction log: one JSON line per served prediction, for drift monitoring.

A request only puts records on a bounded queue (never waits: a full queue drops the record); a
background thread writes them, several lines per write, into `<serve.log_dir>/<stem>.jsonl`,
rotated at `serve.log_max_mb` into `<stem>.jsonl.1` ... `.<serve.log_backups>` (the oldest
deleted). A write that fails (a full disk: ENOSPC, a folder that cannot be made) drops its
records and counts them, and the next write tries again; the request never sees it. Each
service worker writes its own file (`stem` names the worker), so no two processes rotate the
same file.

A record: time (ISO 8601, UTC), model_version, label, confidence, and the image's width,
height, channels (of the upload), mean and std (of the converted 0-255 pixels, as validate);
and, when the served ONNX file has the output, the network's embedding (`EMBEDDING_FIELD`:
the penultimate layer's activations, `tasks.modeling.embedding`) rounded to
`EMBEDDING_DIGITS` significant digits, which the drift monitor's MMD test reads. Rounded, a
128-dimensional embedding takes about 0.8 kB of a line instead of 2.5 kB; the rounding
(relative error <= 5e-4) is far below the distances the test's kernel sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tasks.serving.predictions import Prediction
from tasks.serving.uploads import DecodedImage

LOG_DIR_VARIABLE = "SIXFOLD_LOG_DIR"  # overrides serve.log_dir
QUEUE_RECORDS = 10_000  # records waiting to be written at most (a few MB); more are dropped
LINES_PER_WRITE = 512  # records joined into one write and flush
EMBEDDING_FIELD = "embedding"  # the record's embedding; `tasks.monitoring.served` reads it
EMBEDDING_DIGITS = 4  # significant digits of each logged embedding value
CONFIDENCE_DECIMALS = 6  # decimals of the logged confidence (the monitor's reference rounds alike)
_STOP = object()
logger = logging.getLogger(__name__)


def log_folder(root: Path, configured: str) -> Path:
    """Where the log goes: SIXFOLD_LOG_DIR, else `serve.log_dir`; relative to `root` (the
    repository, or the bento's folder when a bento is served) unless absolute."""
    folder = Path(os.environ.get(LOG_DIR_VARIABLE) or configured).expanduser()
    return folder if folder.is_absolute() else root / folder


def significant(values: np.ndarray, digits: int = EMBEDDING_DIGITS) -> list[float]:
    """`values` rounded to `digits` significant digits, as plain floats (vectorized: about 4 us
    for 128 values, against 40 us formatting each with `f"{value:.4g}"`)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    magnitude = np.floor(np.log10(np.abs(array), where=array != 0, out=np.zeros_like(array)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return (np.round(array * scale) / scale).tolist()


def prediction_record(
    image: DecodedImage,
    prediction: Prediction,
    version: str,
    embedding: np.ndarray | None = None,
) -> dict[str, Any]:
    """The log line of one prediction (see the module docstring); `embedding`: the network's
    embedding of the image (None: the served file has none, and the record has no field)."""
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "model_version": version,
        "label": prediction.label,
        "confidence": round(prediction.confidence, CONFIDENCE_DECIMALS),
        "width": image.width,
        "height": image.height,
        "channels": image.channels,
        "mean": round(image.mean, 4),
        "std": round(image.std, 4),
    }
    if embedding is not None:
        record[EMBEDDING_FIELD] = significant(embedding)
    return record


class PredictionLog:
    """Rotating JSON-lines files written by a background thread; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        stem: str,
        max_bytes: int,
        backups: int,
        on_drop: Callable[[int], None] = lambda count: None,
        queue_records: int = QUEUE_RECORDS,
    ) -> None:
        self.path = folder / f"{stem}.jsonl"
        self.max_bytes, self.backups, self.on_drop = max(1, max_bytes), backups, on_drop
        self.dropped = 0  # records lost so far (queue full or a failed write)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_records)
        self._file: TextIO | None = None
        self._failed = False  # the last write failed: the file may end in half a line
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Queue `records` for writing; never blocks and never raises (full: dropped)."""
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._drop(1)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to `timeout` seconds), then stop the thread."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is written or dropped (tests, shutdown)."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return
        done.wait(timeout)

    def _drop(self, count: int) -> None:
        self.dropped += count
        try:
            self.on_drop(count)
        except Exception:  # a metric must not stop the log
            logger.exception("prediction log: counting dropped records failed")

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < LINES_PER_WRITE:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [item for item in batch if isinstance(item, dict)]
            if records:
                self._write(records)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if _STOP in batch:
                self._close_file()
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        try:
            text = "".join(json.dumps(record, allow_nan=False) + "\n" for record in records)
            handle = self._open()
            if handle.tell() > 0 and handle.tell() + len(text) > self.max_bytes:
                handle = self._rotate()
            handle.write(text)
            handle.flush()
            self._failed = False
        except (OSError, ValueError, TypeError) as error:  # ENOSPC, EACCES; a value JSON refuses
            self._close_file()
            self._failed = True
            self._drop(len(records))
            logger.warning("prediction log: %d record(s) dropped: %s", len(records), error)

    def _open(self) -> TextIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            if self._failed and self._file.tell() > 0:
                self._file.write("\n")  # end a line a failed write may have cut short
        return self._file

    def _rotate(self) -> TextIO:
        self._close_file()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for number in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        return self._open()

    def _close_file(self) -> None:
        if self._file is not None:
            # a failed close loses buffered lines whose failed write is already counted
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
