"""Fingerprint `data.source` into `data/source.json`, the file through which DVC sees the source.

Run with ``python -m tasks.source`` (``make run`` and the Prefect flow do it before ``dvc repro``).

DVC can hash files inside the repository, but not a folder elsewhere on disk, an S3 prefix or a
data set bundled in a package. This step lists the source cheaply (path, size and modification
time, or S3 ETag) and rewrites `data/source.json` only when that listing changed. The ingest
stage depends on the file, so an unchanged source costs DVC nothing and an added, removed or
edited file re-runs ingest and whatever depends on it. The file is committed: it records which
version of the data a result was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tasks.config import load_params_or_exit
from tasks.ingest import DIGITS_SOURCE, SourceError
from tasks.io import filesystem_for, is_remote, read_json, strip_protocol, write_json

SOURCE_FILE = Path("data/source.json")


def _listing(source: str, storage_options: dict[str, Any]) -> list[tuple[str, ...]]:
    if source == DIGITS_SOURCE:
        import sklearn
        from sklearn.datasets import load_digits

        digits = load_digits()
        content = hashlib.sha256(digits.data.tobytes() + digits.target.tobytes()).hexdigest()
        return [("sklearn", sklearn.__version__, content)]
    if is_remote(source):
        filesystem = filesystem_for(source, storage_options)
        path = strip_protocol(source).rstrip("/")
        root = path.rsplit("/", 1)[0] if path.lower().endswith(".csv") else path
        details = filesystem.find(root, detail=True)
        if not details:
            raise SourceError(f"data.source: nothing found at {source!r}")
        return sorted(
            (key, str(info.get("size")), str(info.get("ETag") or info.get("etag") or ""))
            for key, info in details.items()
        )
    root = (os.path.dirname(source) or ".") if source.lower().endswith(".csv") else source
    if not os.path.exists(source):
        raise SourceError(f"data.source: {source!r} does not exist")
    listing = []
    for directory, _folders, files in os.walk(root):
        for name in files:
            full = os.path.join(directory, name)
            stat = os.lstat(full)
            relative = os.path.relpath(full, root)
            listing.append((relative, str(stat.st_size), str(stat.st_mtime_ns)))
    return sorted(listing)


def fingerprint(source: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """A small, stable summary of the source; changes when a file is added, removed or edited."""
    listing = _listing(source, storage_options)
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"source": source, "entries": len(listing), "fingerprint": digest}


def refresh(source: str, storage_options: dict[str, Any], path: Path = SOURCE_FILE) -> bool:
    """Rewrite `path` if the source changed. Returns True when it was rewritten."""
    current = fingerprint(source, storage_options)
    if path.exists() and read_json(path) == current:
        return False
    write_json(path, current)
    return True


def main() -> None:
    params = load_params_or_exit()
    try:
        changed = refresh(params.data.source, dict(params.data.storage_options))
    except SourceError as error:
        raise SystemExit(f"error: {error}") from None
    state = "changed: ingest will re-run" if changed else "unchanged"
    print(f"source: {params.data.source} {state} ({SOURCE_FILE})")


if __name__ == "__main__":
    main()
