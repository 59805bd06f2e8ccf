"""The drift simulator (tasks/monitoring/simulate.py): each kind changes images as it says, the
batch is a class-folder tree drawn from the named splits only, seeded, and mistakes are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.monitoring.simulate import DRIFTS, write_batch
from tests.images import png_bytes, write


def _digit(seed: int) -> np.ndarray:
    """A 16x16 stroke image: dark background, a bright bar placed by the seed."""
    image = np.zeros((16, 16), dtype=np.uint8)
    column = 4 + seed % 8
    image[3:13, column : column + 2] = 200
    return image


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A repository with a split file: 3 images per class and split, classes a and b."""
    layout = Layout(tmp_path)
    rows = ["path,label,group,split"]
    for label_number, label in enumerate(("a", "b")):
        for split_number, split in enumerate(("train", "val", "test")):
            for index in range(3):
                name = f"{label}/{split}-{index}.png"
                seed = 9 * label_number + 3 * split_number + index
                write(layout.raw_files / name, png_bytes(_digit(seed)))
                rows.append(f"{name},{label},,{split}")
    layout.split_file.parent.mkdir(parents=True)
    layout.split_file.write_text("\n".join(rows) + "\n")
    return layout


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def test_the_batch_holds_the_named_splits_only_in_class_folders(
    layout: Layout, tmp_path: Path
) -> None:
    counts = write_batch(layout, "invert", ["train", "val"], tmp_path / "out", seed=1)
    assert counts == {"a": 6, "b": 6}
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")
    )
    assert len(written) == 12 and not any("test-" in name for name in written)
    assert {name.split("/")[0] for name in written} == {"a", "b"}


@pytest.mark.parametrize("kind", sorted(DRIFTS))
def test_each_kind_changes_the_image_as_it_says(kind: str, layout: Layout, tmp_path: Path) -> None:
    write_batch(layout, kind, ["test"], tmp_path / "out", seed=3)
    for drifted in sorted((tmp_path / "out").rglob("*.png")):
        label, name = drifted.parent.name, drifted.name.removeprefix(f"{kind}-")
        original = _pixels(layout.raw_files / label / name)
        changed = _pixels(drifted)
        assert changed.shape == original.shape
        if kind == "none":
            assert np.array_equal(changed, original)
        elif kind == "invert":
            assert np.array_equal(changed, 255 - original)
        elif kind == "thicken":  # every stroke pixel kept, the stroke grows
            assert (changed >= original).all() and (changed > 0).sum() > (original > 0).sum()
        else:  # rotate, noise: a different image with about the same brightness
            assert not np.array_equal(changed, original)
            assert abs(changed.mean() - original.mean()) < 40


def test_the_same_seed_writes_the_same_bytes(layout: Layout, tmp_path: Path) -> None:
    write_batch(layout, "noise", ["train"], tmp_path / "one", seed=7)
    write_batch(layout, "noise", ["train"], tmp_path / "two", seed=7)
    write_batch(layout, "noise", ["train"], tmp_path / "three", seed=8)
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").rglob("*.png")}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").rglob("*.png")}
    three = {p.name: p.read_bytes() for p in (tmp_path / "three").rglob("*.png")}
    assert one == two and one != three


def test_mistakes_are_one_line(layout: Layout, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="drift kind 'blur' is unknown"):
        write_batch(layout, "blur", ["train"], tmp_path / "out", seed=1)
    with pytest.raises(UserError, match="splits must be among train, val, test"):
        write_batch(layout, "invert", ["holdout"], tmp_path / "out", seed=1)
    write_batch(layout, "invert", ["train"], tmp_path / "out", seed=1)
    with pytest.raises(UserError, match="is not empty"):
        write_batch(layout, "invert", ["train"], tmp_path / "out", seed=1)
    with pytest.raises(UserError, match="run the pipeline first"):
        write_batch(Layout(tmp_path / "empty"), "invert", ["train"], tmp_path / "new", seed=1)
