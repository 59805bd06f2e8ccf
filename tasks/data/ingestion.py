"""Copying a source's files into a folder with a manifest: what the ingest stage does to
`data.source`, and continual learning (`tasks.continual`) to a new labelled batch.

Every entry of the source is one manifest row (path, label, group, sha256, bytes, status,
detail); entries never opened (``unsafe_path``, ``missing``) keep their status for validation to
quarantine, and what a folder holds that is not data goes to ``ignored.csv`` (see
`tasks/ingest.py`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from tasks.core.layout import Layout
from tasks.data.sources import (
    IGNORED_COLUMNS,
    IGNORED_FILE,
    Source,
    SourceEntry,
    SourceError,
    count_ignored,
    describe_ignored,
    materialized,
    open_source,
)

MANIFEST_COLUMNS = ["path", "label", "group", "sha256", "bytes", "status", "detail"]
_CHUNK = 1 << 20  # copy in 1 MiB reads: bounded memory for any file size


# --------------------------------------------------------------------------- copying


def _copy_one(source: Source, entry: SourceEntry, destination_root: Path) -> dict[str, Any]:
    row = {"path": entry.path, "label": entry.label, "group": entry.group}
    row |= {"sha256": "", "bytes": -1}
    row |= {"status": entry.status, "detail": entry.detail}
    if entry.status != "ok":
        return row  # never opened
    source_path = f"{source.root.rstrip('/')}/{entry.path}"
    destination = destination_root / entry.path
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with source.filesystem.open(source_path, "rb") as reader, open(destination, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    row |= {"sha256": digest.hexdigest(), "bytes": size}
    return row


def ingest(
    source: str,
    storage_options: dict[str, Any],
    out_dir: Path | None = None,
    group_column: str | None = None,
) -> pd.DataFrame:
    """Copy every file of `source` under `out_dir/files/` and write `out_dir/manifest.csv`.

    What a folder source holds that is not data goes to `out_dir/ignored.csv` (path, reason,
    detail); `out_dir` defaults to the current repository's `data/raw`. Returns the manifest
    (one row per input entry, in sorted path order).
    """
    out_dir = out_dir if out_dir is not None else Layout.discover().raw_dir
    files_dir = out_dir / "files"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    files_dir.mkdir(parents=True)
    with materialized(source) as location:
        resolved = open_source(location, storage_options, group_column)
        ignored = pd.DataFrame([asdict(e) for e in resolved.ignored], columns=IGNORED_COLUMNS)
        if not resolved.entries:
            ignored_text = describe_ignored(count_ignored(ignored["reason"]))
            also = f" to ingest; {ignored_text}" if ignored_text else ""
            raise SourceError(f"data.source: {source!r} holds no files{also}")
        workers = 16 if resolved.remote else 4
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = pool.map(lambda e: _copy_one(resolved, e, files_dir), resolved.entries)
            rows = list(tqdm(jobs, total=len(resolved.entries), desc="ingest", unit="file"))
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    _write_csv(manifest, out_dir / "manifest.csv")
    _write_csv(ignored, out_dir / IGNORED_FILE)
    return manifest


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    path.write_text(buffer.getvalue())
