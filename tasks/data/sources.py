"""Where images come from: scikit-learn's digits, a class-folder tree, or a CSV manifest,
local or on S3, resolved into a list of entries before any file is opened.

Nothing is judged here except what must be judged before a file is opened: a manifest path that
is absolute, climbs out with ``..`` or resolves (symlinks included) outside the source root is
recorded with status ``unsafe_path``; a listed file that does not exist (or a symlink to nothing)
is recorded with status ``missing``. The validate stage turns both into quarantine entries.

In a folder source some entries are not data and are never opened, but none is dropped silently:
each is an :class:`IgnoredEntry` with its reason (:data:`IGNORED_REASONS`), which ingest writes to
``data/raw/ignored.csv`` and validate counts, so ``accepted + quarantined + ignored`` is every
entry under the source. The fingerprint (``tasks/source.py``) lists the same entries.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from tasks.core.errors import UserError
from tasks.core.io import filesystem_for, is_remote, strip_protocol

DIGITS_SOURCE = "sklearn:digits"
IGNORED_FILE = "ignored.csv"  # written by ingest beside manifest.csv in data/raw
IGNORED_COLUMNS = ["path", "reason", "detail"]
IGNORED_REASONS = (
    "hidden",  # a name starting with '.', or anything inside such a folder (.DS_Store, .git/...)
    "symlinked_folder",  # a link to a folder inside the root: its files are listed where they are
    "not_a_file",  # a FIFO, socket or device: opening a FIFO would block ingest forever
)


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
class IgnoredEntry:
    """An entry under a folder source that is not data: never opened, but counted with a reason."""

    path: str  # relative to the source root, POSIX separators
    reason: str  # one of IGNORED_REASONS
    detail: str = ""


def count_ignored(reasons: Iterable[str]) -> dict[str, int]:
    """Ignored entries per reason, every reason of IGNORED_REASONS listed (0 when none)."""
    counts = Counter(reasons)
    return {reason: counts.get(reason, 0) for reason in IGNORED_REASONS}


def describe_ignored(counts: dict[str, int]) -> str:
    """``3 ignored (hidden=2, symlinked_folder=1)`` for a stage's last line; '' when none."""
    present = {reason: n for reason, n in counts.items() if n}
    if not present:
        return ""
    reasons_text = ", ".join(f"{reason}={n}" for reason, n in present.items())
    return f"{sum(present.values())} ignored ({reasons_text})"


@dataclass(frozen=True)
class Source:
    """A resolved source: a filesystem, the root every path is relative to, and its entries."""

    filesystem: Any
    root: str
    entries: list[SourceEntry]
    remote: bool
    ignored: list[IgnoredEntry] = field(default_factory=list)


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


def list_folder(
    filesystem: Any, root: str, remote: bool
) -> tuple[list[SourceEntry], list[IgnoredEntry]]:
    """Every entry under a class-folder root, as data entries and ignored entries.

    The first folder level is the label. Symlinked folders are never followed (a link that
    resolves outside the root is ``unsafe_path``); hidden names and everything below them are
    ignored, whatever they point to.
    """
    if not filesystem.isdir(root):
        raise SourceError(_not_a_folder(filesystem, root, remote))
    if remote:
        return list_keys(root, filesystem.find(root))
    return _list_local_folder(root)


def _not_a_folder(filesystem: Any, path: str, remote: bool, shown: str | None = None) -> str:
    """Why `path` cannot be read as a class-folder source: it does not exist, or is a file."""
    shown = shown or path
    if filesystem.exists(path):
        return (
            f"data.source: {shown!r} is a file, not a folder; point data.source at a folder of "
            "class folders or a .csv manifest"
        )
    where = "" if remote or os.path.isabs(path) else f" (looked for {os.path.abspath(path)})"
    return (
        f"data.source: {shown!r} does not exist{where}; point data.source at an existing "
        "folder, a .csv manifest or sklearn:digits"
    )


def list_keys(root: str, keys: Iterable[str]) -> tuple[list[SourceEntry], list[IgnoredEntry]]:
    """Entries of an object store's keys under `root` (no folders or links there: only hidden)."""
    prefix = root.rstrip("/") + "/"
    entries: list[SourceEntry] = []
    ignored: list[IgnoredEntry] = []
    for key in keys:
        relative = key[len(prefix) :]
        hidden = _hidden_detail(relative)
        if hidden:
            ignored.append(IgnoredEntry(relative, "hidden", hidden))
        else:
            entries.append(_folder_entry(relative))
    return entries, ignored


def _list_local_folder(root: str) -> tuple[list[SourceEntry], list[IgnoredEntry]]:
    entries: list[SourceEntry] = []
    ignored: list[IgnoredEntry] = []

    def unreadable(error: OSError) -> None:
        raise error  # a folder that cannot be listed must not lose its files silently

    for directory, folders, files in os.walk(root, onerror=unreadable):  # links not followed
        links = [name for name in folders if os.path.islink(os.path.join(directory, name))]
        for name in sorted(links) + sorted(files):
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            found = _folder_link(root, relative) if name in links else _file(root, relative)
            (ignored if isinstance(found, IgnoredEntry) else entries).append(found)
    return entries, ignored


def _folder_link(root: str, relative: str) -> SourceEntry | IgnoredEntry:
    """A symlink to a folder: hidden, unsafe (escapes the root) or ignored (not followed)."""
    hidden = _hidden_detail(relative)
    if hidden:
        return IgnoredEntry(relative, "hidden", hidden)
    target = os.readlink(os.path.join(root, relative))
    if _escapes_root(root, relative):
        detail = f"symlinked folder points outside the source root ({target})"
        return replace(_folder_entry(relative), status="unsafe_path", detail=detail)
    detail = f"symlink to a folder inside the source ({target}), not followed"
    return IgnoredEntry(relative, "symlinked_folder", detail)


def _file(root: str, relative: str) -> SourceEntry | IgnoredEntry:
    """Anything in a folder that is not a folder: a file, a link to one, a FIFO, a broken link."""
    hidden = _hidden_detail(relative)
    if hidden:
        return IgnoredEntry(relative, "hidden", hidden)
    entry = _folder_entry(relative)
    if _escapes_root(root, relative):
        detail = "symlink resolves outside the source root"
        return replace(entry, status="unsafe_path", detail=detail)
    full = os.path.join(root, relative)
    try:
        mode = os.stat(full).st_mode  # follows a link, known by now to stay inside the root
    except OSError as error:
        if error.errno not in {errno.ENOENT, errno.ELOOP, errno.ENOTDIR}:
            raise
        if os.path.islink(full):
            detail = f"symlink to nothing ({os.readlink(full)}: {error.strerror})"
        else:
            detail = f"vanished while the source was listed ({error.strerror})"
        return replace(entry, status="missing", detail=detail)
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        return IgnoredEntry(relative, "not_a_file", f"a {kind}, not a regular file")
    return entry


def _hidden_detail(relative: str) -> str:
    """Why `relative` is hidden (its name or a folder above starts with '.'), or '' when not."""
    parts = relative.split("/")
    for depth, part in enumerate(parts):
        if part.startswith("."):
            if depth == len(parts) - 1:
                return "name starts with '.'"
            return f"inside hidden folder {'/'.join(parts[: depth + 1])}"
    return ""


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
    missing_columns = {"path", "label"} - set(table.columns)
    if missing_columns:
        raise SourceError(
            f"data.source: manifest {manifest!r} lacks column(s) {sorted(missing_columns)} "
            f"(found {list(table.columns)}; expected path,label)"
        )
    if group_column and group_column not in table.columns:
        raise SourceError(
            f"data.group_column={group_column!r}: manifest {manifest!r} has no column "
            f"{group_column!r} (found {list(table.columns)}); add that column or set "
            "data.group_column to one of the manifest's columns (null for no groups)"
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
    ignored: list[IgnoredEntry] = []
    if path.lower().endswith(".csv"):
        root, entries = list_manifest(filesystem, path, remote, group_column)
    elif not filesystem.isdir(path):
        raise SourceError(_not_a_folder(filesystem, path, remote, shown=location))
    elif group_column:
        raise SourceError(
            f"data.group_column={group_column!r} needs a CSV manifest source with that column; "
            f"{location!r} is a folder: point data.source at a manifest or set "
            "data.group_column: null"
        )
    else:
        root = path
        entries, ignored = list_folder(filesystem, path, remote)
    return Source(
        filesystem,
        root,
        sorted(entries, key=lambda e: (e.path, e.label)),
        remote,
        sorted(ignored, key=lambda e: e.path),
    )
