"""Small shared helpers for files, JSON reports and storage (local or S3 through fsspec/s3fs)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec

# Reports and packed arrays are written atomically so an interrupted stage never leaves a
# half-written file that DVC or the next stage would trust.


TEMPORARY_SUFFIX = ".tmp"  # of a file being written; git ignores `*.tmp`


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader, or a kill at any moment, finds the old file or
    the new one, never half of one: a temporary file with a unique name in the same folder
    (two writers never share one), flushed to disk, then renamed over `path`. A kill before the
    rename leaves only a hidden ``.<name>.<random>.tmp`` beside it: garbage, not the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is for everyone
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write `payload` as pretty, key-sorted JSON (stable bytes for DVC), atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(Path(path), text.encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_remote(uri: str) -> bool:
    """True for URIs that fsspec must open (s3://, gs://, ...), False for local paths."""
    return "://" in uri and not uri.startswith("file://")


def filesystem_for(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The fsspec filesystem for `uri`. Credentials come from the environment or an AWS profile."""
    protocol = uri.split("://", 1)[0] if is_remote(uri) else "file"
    if protocol == "file":
        return fsspec.filesystem(protocol, **(storage_options or {}))
    # a fresh instance without cached listings: a source that changed since the last listing in
    # this process (a long-running flow, a notebook) must be seen as it is now
    options = {"skip_instance_cache": True, "use_listings_cache": False, **(storage_options or {})}
    return fsspec.filesystem(protocol, **options)


def strip_protocol(uri: str) -> str:
    return uri.split("://", 1)[1] if is_remote(uri) else uri
