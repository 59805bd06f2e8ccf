"""The photo-like data set (tasks/data/photos.py): what it promises about its images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tasks.data.photos import main, write_photo_patches


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_fourteen_classes_of_varied_patches_seeded(tmp_path: Path) -> None:
    counts = write_photo_patches(tmp_path / "a", per_class=12, seed=3)
    assert len(counts) == 14 and set(counts.values()) == {12}
    files = _files(tmp_path / "a")
    assert len(files) == 14 * 12
    assert {f.parent.name for f in files} == set(counts)
    modes, sizes, suffixes = set(), set(), set()
    for file in files:
        with Image.open(file) as image:
            modes.add(image.mode)
            assert image.width == image.height and 24 <= image.width <= 64
            sizes.add(image.width)
        suffixes.add(file.suffix)
    assert modes == {"RGB", "L"}  # half colour, half grayscale
    assert suffixes == {".png", ".jpg"}
    assert len(sizes) > 10
    # the same seed writes the same bytes; another seed other ones
    write_photo_patches(tmp_path / "b", per_class=12, seed=3)
    write_photo_patches(tmp_path / "c", per_class=12, seed=4)
    same = [f.read_bytes() for f in _files(tmp_path / "b")]
    assert same == [f.read_bytes() for f in files]
    assert [f.read_bytes() for f in _files(tmp_path / "c")] != same


def test_the_command_refuses_a_folder_with_files_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([str(tmp_path / "new"), "--per-class", "1"])
    assert "14 images in 14 classes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "new"), "--per-class", "1"])
    assert stopped.value.code == 2
    assert "exists and is not empty" in capsys.readouterr().err
