"""Fingerprint `data.source` into `data/source.json`, the file through which DVC sees the source.

Run with ``python -m tasks.source`` (``make run`` and the Prefect flow do it before ``dvc repro``).

DVC can hash files inside the repository, but not a folder elsewhere on disk, an S3 prefix or a
data set bundled in a package. This step lists the source cheaply (path, size and modification
time, or S3 ETag) and rewrites `data/source.json` only when that listing changed. The ingest
stage depends on the file, so an unchanged source costs DVC nothing and an added, removed or
edited file re-runs ingest and whatever depends on it. The file is committed: it records which
version of the data a result was trained on.

A folder is listed by the same function ingest uses, the entries it ignores (hidden names,
symlinked folders, ...) included by path and reason, so the fingerprint changes exactly when
what ingest copies, flags or counts as ignored changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tasks.core.config import load_params_or_exit
from tasks.core.fingerprint import fingerprint
from tasks.core.io import filesystem_for, is_remote, read_json, strip_protocol, write_json
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.sources import (
    DIGITS_SOURCE,
    SourceEntry,
    SourceError,
    list_folder,
    list_keys,
    list_manifest,
)


def _listing(source: str, storage_options: dict[str, Any]) -> list[tuple[str, ...]]:
    if source == DIGITS_SOURCE:
        import sklearn
        from sklearn.datasets import load_digits

        digits = load_digits()
        content = hashlib.sha256(digits.data.tobytes() + digits.target.tobytes()).hexdigest()
        return [("sklearn", sklearn.__version__, content)]
    if source.lower().endswith(".csv"):
        return _manifest_listing(source, storage_options)
    filesystem = filesystem_for(source, storage_options)
    if is_remote(source):
        root = strip_protocol(source).rstrip("/")
        details = filesystem.find(root, detail=True)
        if not details:
            raise SourceError(f"data.source: nothing found at {source!r}")
        entries, ignored = list_keys(root, details)
        listing = [(e.path, *_version(details[f"{root}/{e.path}"])) for e in entries]
    else:
        root = source.rstrip("/") or "/"
        entries, ignored = list_folder(filesystem, root, remote=False)
        listing = [_local_version(root, entry) for entry in entries]
    # exactly what ingest writes to data/raw/ignored.csv, so its count is never stale
    listing += [(e.path, "ignored", e.reason, e.detail) for e in ignored]
    return sorted(listing)


def _local_version(root: str, entry: SourceEntry) -> tuple[str, ...]:
    """Size and modification time of a file ingest copies; only the status of one it never opens."""
    if entry.status != "ok":  # never stat a path that leaves the root
        return (entry.path, entry.status)
    stat = os.stat(os.path.join(root, entry.path))  # a link's target: inside the root
    return (entry.path, str(stat.st_size), str(stat.st_mtime_ns))


def _version(info: dict[str, Any]) -> tuple[str, str]:
    """Size and a change marker (S3's ETag, or the modification time) of one listed object."""
    marker = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return str(info.get("size")), str(marker or "")


def _manifest_listing(source: str, storage_options: dict[str, Any]) -> list[tuple[str, ...]]:
    """The manifest itself plus exactly the files it lists (not everything beside it)."""
    remote = is_remote(source)
    filesystem = filesystem_for(source, storage_options)
    manifest = strip_protocol(source) if remote else source
    root, entries = list_manifest(filesystem, manifest, remote)
    if remote:
        details = filesystem.find(root, detail=True)
        listing = [("<manifest>", *_version(filesystem.info(manifest)))]
    else:
        details = {}
        stat = os.stat(manifest)
        listing = [("<manifest>", str(stat.st_size), str(stat.st_mtime_ns))]
    for entry in entries:
        if not remote:
            listing.append(_local_version(root, entry))
        elif entry.status != "ok":  # never look up a path that leaves the root
            listing.append((entry.path, entry.status))
        else:
            key = f"{root.rstrip('/')}/{entry.path}"
            listing.append((entry.path, *_version(details.get(key, {}))))
    return sorted(listing)


def source_fingerprint(source: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """A small, stable summary of the source; changes when a file is added, removed or edited."""
    listing = _listing(source, storage_options)
    digest = fingerprint(listing, length=64)
    return {"source": source, "entries": len(listing), "fingerprint": digest}


def refresh(source: str, storage_options: dict[str, Any], path: Path | None = None) -> bool:
    """Rewrite `path` (default: the repository's data/source.json) if the source changed.

    Returns True when it was rewritten.
    """
    path = path if path is not None else Layout.discover().source_file
    current = source_fingerprint(source, storage_options)
    if path.exists() and read_json(path) == current:
        return False
    write_json(path, current)
    return True


def main() -> None:
    layout = Layout.discover()
    params = load_params_or_exit(layout.params_file)
    changed = refresh(params.data.source, dict(params.data.storage_options), layout.source_file)
    state = "changed: ingest will re-run" if changed else "unchanged"
    print(f"source: {params.data.source} {state} ({layout.relative(layout.source_file)})")


if __name__ == "__main__":
    stage_main(
        main,
        reads=[
            "params.yaml: data.source, data.storage_options",
            "the listing of the source (names, sizes, times or ETags)",
        ],
        writes=["data/source.json (only when the listing changed)"],
    )
