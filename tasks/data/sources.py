"""Where images come from: scikit-learn's digits, a class-folder tree, or a CSV manifest,
local or on S3, resolved into a list of entries before any file is opened.

Nothing is judged here except what must be judged before a file is opened: a manifest path that
is absolute, climbs out with ``..`` or resolves (symlinks included) outside the source root is
recorded with status ``unsafe_path``; a listed file that does not exist is recorded with status
``missing``. The validate stage turns both into quarantine entries.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from tasks.core.errors import UserError
from tasks.core.io import filesystem_for, is_remote, strip_protocol

DIGITS_SOURCE = "sklearn:digits"


class SourceError(UserError, ValueError):
    """The source itself cannot be read (missing folder, manifest without its columns, ...)."""


@dataclass(frozen=True)
class SourceEntry:
    """One input file as the source names it."""

    path: str  # relative to the source root, POSIX separators, as written in the source
    label: str
    status: str = "ok"  # ok | unsafe_path | missing
    detail: str = ""
    group: str = ""  # the value of data.group_column, for manifests that have one


@dataclass(frozen=True)
class Source:
    """A resolved source: a filesystem, the root every path is relative to, and its entries."""

    filesystem: Any
    root: str
    entries: list[SourceEntry]
    remote: bool


# --------------------------------------------------------------------------- digits


def write_digits(folder: Path) -> int:
    """Write scikit-learn's bundled digits as 8x8 grayscale PNGs in class folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        class_folder = folder / str(label)
        class_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(class_folder / f"digit_{index:04d}.png")
    return len(pixels)


@contextmanager
def materialized(source: str) -> Iterator[str]:
    """Yield a readable location for `source` (``sklearn:digits`` goes to a temporary folder)."""
    if source != DIGITS_SOURCE:
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="sixfold-digits-") as folder:
        write_digits(Path(folder))
        yield folder


# --------------------------------------------------------------------------- listing


def _is_unsafe_relative(path: str) -> str:
    """Why a manifest path is unsafe before touching the disk, or '' when it is not."""
    if not path:
        return "empty path"
    if "://" in path or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        return "path climbs out of the source root with '..'"
    return ""


def _escapes_root(root: str, path: str) -> bool:
    """True when root/path resolves (following symlinks) outside root. Opens nothing."""
    real_root = os.path.realpath(root)
    real_path = os.path.realpath(os.path.join(root, path))
    return os.path.commonpath([real_root, real_path]) != real_root


def list_folder(filesystem: Any, root: str, remote: bool) -> list[SourceEntry]:
    """Every file under a class-folder root; the first folder level is the label."""
    if not filesystem.isdir(root):
        raise SourceError(f"data.source: folder {root!r} does not exist or is not a folder")
    entries: list[SourceEntry] = []
    if remote:
        for key in filesystem.find(root):
            relative = key[len(root.rstrip("/")) + 1 :]
            if not any(part.startswith(".") for part in relative.split("/")):
                entries.append(_folder_entry(relative))
        return entries
    for directory, folders, files in os.walk(root, followlinks=False):
        folders[:] = [name for name in folders if not name.startswith(".")]  # .git, .ipynb_...
        for name in sorted(folders):
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full) and _escapes_root(root, relative):
                label = relative.split("/")[0] if "/" in relative else ""
                detail = f"symlinked folder points outside the source root ({os.readlink(full)})"
                entries.append(SourceEntry(relative, label, "unsafe_path", detail))
        for name in files:
            relative = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            if name.startswith("."):
                continue  # .DS_Store, .gitkeep, hidden folders: file-system clutter, not data
            entry = _folder_entry(relative)
            if _escapes_root(root, relative):
                detail = "symlink resolves outside the source root"
                entry = SourceEntry(entry.path, entry.label, "unsafe_path", detail)
            entries.append(entry)
    return entries


def _folder_entry(relative: str) -> SourceEntry:
    parts = relative.split("/")
    label = parts[0] if len(parts) > 1 else ""
    return SourceEntry(relative, label)


def list_manifest(
    filesystem: Any, manifest: str, remote: bool, group_column: str | None = None
) -> tuple[str, list[SourceEntry]]:
    """Rows of a `path,label` CSV manifest; returns the root (the CSV's folder) and the entries."""
    if not filesystem.isfile(manifest):
        raise SourceError(f"data.source: manifest {manifest!r} does not exist")
    try:
        with filesystem.open(manifest, "rb") as handle:
            table = pd.read_csv(handle, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise SourceError(
            f"data.source: manifest {manifest!r} is not a readable CSV ({first_line})"
        ) from None
    missing_columns = {"path", "label", *([group_column] if group_column else [])} - set(
        table.columns
    )
    if missing_columns:
        raise SourceError(
            f"data.source: manifest {manifest!r} lacks column(s) {sorted(missing_columns)} "
            f"(found {list(table.columns)}; expected path,label)"
        )
    root = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    existing = set(filesystem.find(root)) if remote else None
    groups = table[group_column] if group_column else [""] * len(table)
    entries = []
    for path, label, group in zip(table["path"], table["label"], groups, strict=True):
        path, label, group = path.strip(), label.strip(), group.strip()
        reason = _is_unsafe_relative(path)
        if reason:
            status, detail = "unsafe_path", reason
        elif remote:
            present = f"{root.rstrip('/')}/{path}" in existing
            status, detail = ("ok", "") if present else ("missing", "listed file does not exist")
        elif _escapes_root(root, path):
            status, detail = "unsafe_path", "resolves (through a symlink) outside the source root"
        elif not os.path.isfile(os.path.join(root, path)):
            status, detail = "missing", "listed file does not exist"
        else:
            status, detail = "ok", ""
        entries.append(SourceEntry(path, label, status, detail, group))
    return root, entries


def open_source(
    location: str, storage_options: dict[str, Any], group_column: str | None = None
) -> Source:
    """Resolve a folder or manifest, local or remote, into a :class:`Source`."""
    remote = is_remote(location)
    filesystem = filesystem_for(location, storage_options)
    path = strip_protocol(location).rstrip("/") if remote else location.rstrip("/") or "/"
    if path.lower().endswith(".csv"):
        root, entries = list_manifest(filesystem, path, remote, group_column)
    elif group_column:
        raise SourceError(
            f"data.group_column={group_column!r} needs a CSV manifest source with that column; "
            f"{location!r} is a folder"
        )
    else:
        root, entries = path, list_folder(filesystem, path, remote)
    return Source(filesystem, root, sorted(entries, key=lambda e: (e.path, e.label)), remote)
