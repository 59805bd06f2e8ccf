"""Image files the tests plant in sources: seeded noise, PNG bytes, a file written with its folders,
a grouped CSV manifest, the clutter a real folder holds besides its images, and every entry a user
would count.

Shared by the tests of code and their end-to-end counterparts (validate, split/augment), so a
planted image is made the same way everywhere.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    """`array` encoded as a PNG (`save` goes to PIL: compress_level, pnginfo, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, "PNG", **save)
    return buffer.getvalue()


def noise(seed: int, shape: tuple[int, ...] = (16, 16)) -> np.ndarray:
    """Seeded uint8 noise: distinct seeds give distinct images (and distinct bytes)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write(path: Path, data: bytes) -> None:
    """Write `data` to `path`, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_grouped_manifest(
    root: Path,
    column: str,
    groups: int,
    per_group: int,
    label: Callable[[int, int], str],
    group_name: Callable[[int], str] = lambda group: f"p{group}",
) -> tuple[Path, list[dict[str, str]]]:
    """A CSV manifest source with a group column: `per_group` seeded noise images in a folder per
    group, `label(group, index)` each image's label. Returns the manifest's path and its rows."""
    rows = []
    for group in range(groups):
        for index in range(per_group):
            path = f"{group_name(group)}/img_{index}.png"
            write(root / path, png_bytes(noise(group * 10 + index)))
            rows.append({"path": path, "label": label(group, index), column: group_name(group)})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", column])
        writer.writeheader()
        writer.writerows(rows)
    return manifest, rows


def entries_under(root: Path) -> set[str]:
    """What a user counts as the files of a folder: every entry that is not a real folder (files,
    links to files or folders, FIFOs), found without following links; POSIX paths under `root`."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")  # pathlib's ** does not enter symlinked folders
        if path.is_symlink() or not path.is_dir()
    }


def plant_not_data(root: Path, outside: Path) -> dict[str, str]:
    """Plant in `root` what a folder source holds that is not data; returns path -> the reason
    ingest must ignore it with. `root`/dog must exist; `outside` is a folder outside `root`."""
    write(root / ".DS_Store", b"finder clutter")
    write(root / "cat" / ".DS_Store", b"finder clutter")
    write(root / ".git" / "HEAD", b"ref: refs/heads/main\n")
    write(root / ".git" / "objects" / "ab" / "cdef0123", b"x\x01 a git object")
    # a good image, but in a hidden folder: a notebook's checkpoint is not a training image
    write(root / "cat" / ".ipynb_checkpoints" / "c0-checkpoint.png", png_bytes(noise(4242)))
    (root / "cat" / "more_dogs").symlink_to(root / "dog", target_is_directory=True)
    (root / ".cache").symlink_to(outside, target_is_directory=True)  # hidden: never followed
    return {
        ".DS_Store": "hidden",
        "cat/.DS_Store": "hidden",
        ".git/HEAD": "hidden",
        ".git/objects/ab/cdef0123": "hidden",
        "cat/.ipynb_checkpoints/c0-checkpoint.png": "hidden",
        "cat/more_dogs": "symlinked_folder",
        ".cache": "hidden",
    }
