"""`data.channels: auto`: RGB when enough accepted images carry colour, grayscale otherwise.

Real folders of small images written here, run through the real ingest and validate functions
(and, for the split's side, the stages' `main()` in a work folder, tests/stages.py). Gray pixels
saved as RGB (PNG or JPEG) must count as gray; an explicit 1 or 3 is kept whatever the images.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tasks.core.config import Params, with_overrides
from tasks.core.layout import Layout
from tasks.data.images import COLOUR_LEVELS, COLOUR_SHARE, colour, load_converted, to_array
from tasks.data.packed import PackedMeta
from tasks.data.sources import write_digits
from tasks.ingest import ingest
from tasks.validate import validate, write_outputs
from tests.conftest import REPO_ROOT, merge, run
from tests.images import noise, png_bytes, write
from tests.stages import run_stages

CLASSES = ("a", "b")


def gray_png(seed: int) -> bytes:
    return png_bytes(noise(seed))  # mode L


def colour_png(seed: int) -> bytes:
    return png_bytes(noise(seed, (16, 16, 3)))  # RGB noise: chroma far above COLOUR_LEVELS


def gray_rgb_png(seed: int) -> bytes:
    """An RGB file whose pixels are gray (R = G = B)."""
    return png_bytes(np.dstack([noise(seed)] * 3))


def nearly_gray(seed: int) -> np.ndarray:
    """Gray pixels with the colour noise a scanner or another encoder leaves: up to two levels
    up or down on each channel."""
    gray = noise(seed).astype(np.int16)
    tint = np.random.default_rng(seed).integers(-2, 3, (16, 16, 3))
    return np.clip(gray[:, :, None] + tint, 0, 255).astype(np.uint8)


def gray_rgb_jpeg(seed: int) -> bytes:
    """Nearly gray pixels saved as an RGB JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(nearly_gray(seed), mode="RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def nearly_gray_png(seed: int) -> bytes:
    """Nearly gray pixels saved losslessly: the noise stays (about 2.4 levels of chroma)."""
    return png_bytes(nearly_gray(seed))


def plant(root: Path, files: list[bytes]) -> None:
    """`files` under `root`, alternating between the two class folders."""
    for index, data in enumerate(files):
        suffix = "jpg" if data.startswith(b"\xff\xd8") else "png"
        write(root / CLASSES[index % 2] / f"img_{index:03d}.{suffix}", data)


def validated(root: Path, work: Path, channels: object = "auto") -> tuple[pd.DataFrame, dict]:
    """Ingest and validate `root` with `data.channels` = `channels`: the table and the report."""
    layout = Layout(work)
    data = with_overrides(Params(), {"data.channels": channels}).data
    table = validate(ingest(str(root), {}, layout.raw_dir), data, layout.raw_files)
    return table, write_outputs(table, layout, data)


# --------------------------------------------------------------------------- the measure


def test_gray_pixels_measure_no_colour_whatever_the_file() -> None:
    for data in (gray_png(1), gray_rgb_png(2), gray_rgb_jpeg(3), nearly_gray_png(4)):
        with Image.open(io.BytesIO(data)) as image:
            assert colour(to_array(image, 3)) <= COLOUR_LEVELS
    with Image.open(io.BytesIO(nearly_gray_png(5))) as image:
        assert colour(to_array(image, 3)) > 1  # the noise is measured, and stays under the bar
    with Image.open(io.BytesIO(colour_png(6))) as image:
        assert colour(to_array(image, 3)) > 10 * COLOUR_LEVELS


def test_colour_is_measured_on_a_small_copy_of_a_large_image() -> None:
    """A 2000 px image is box-filtered to at most 64 px a side: flat colour keeps its chroma."""
    red = np.zeros((2000, 1500, 3), dtype=np.uint8)
    red[:, :, 0] = 200
    assert colour(red) == pytest.approx(200)
    assert colour(np.full((2000, 1500, 3), 128, dtype=np.uint8)) == 0


# --------------------------------------------------------------------------- auto on folders


@pytest.mark.parametrize(
    ("files", "channels", "coloured"),
    [
        pytest.param([gray_png(i) for i in range(20)], 1, 0, id="gray"),
        pytest.param([colour_png(i) for i in range(20)], 3, 20, id="colour"),
        pytest.param(
            [gray_rgb_png(i) for i in range(7)]
            + [gray_rgb_jpeg(100 + i) for i in range(7)]
            + [nearly_gray_png(200 + i) for i in range(6)],
            1,
            0,
            id="gray-looking-rgb",
        ),
        # 2 of 20 (10 %) >= COLOUR_SHARE: the minority's colour is kept
        pytest.param(
            [colour_png(i) for i in range(2)] + [gray_png(100 + i) for i in range(18)],
            3,
            2,
            id="mixed-above",
        ),
        # 1 of 40 (2.5 %) < COLOUR_SHARE: a stray colour file does not triple the arrays
        pytest.param(
            [colour_png(0)] + [gray_rgb_png(100 + i) for i in range(39)], 1, 1, id="mixed-below"
        ),
    ],
)
def test_auto_resolves_on_the_accepted_images(
    tmp_path: Path, files: list[bytes], channels: int, coloured: int
) -> None:
    root = tmp_path / "source"
    plant(root, files)
    table, report = validated(root, tmp_path / "work")

    choice = report["channels"]
    assert (choice["requested"], choice["channels"]) == ("auto", channels)
    assert (choice["colour_images"], choice["accepted"]) == (coloured, len(files))
    assert choice["colour_share"] == pytest.approx(coloured / len(files))
    assert choice["share_needed"] == COLOUR_SHARE
    word = "RGB" if channels == 3 else "grayscale"
    assert choice["reason"].startswith(f"auto: {coloured} of {len(files)} accepted images (")
    assert choice["reason"].endswith(
        f"carry colour ({'>=' if channels == 3 else '<'} 5%) -> {word}"
    )
    assert set(table["channels"]) == {channels}

    # the manifest holds each image's colour, and mean/std at the resolved channels
    manifest = pd.read_csv(Layout(tmp_path / "work").validated_manifest, keep_default_na=False)
    assert "colour" in manifest.columns
    assert int((manifest["colour"] > COLOUR_LEVELS).sum()) == coloured
    files_dir = Layout(tmp_path / "work").raw_files
    for row in manifest.head(3).itertuples():
        pixels = load_converted(files_dir / row.path, channels)
        assert (row.mean, row.std) == pytest.approx((pixels.mean(), pixels.std()))


def test_only_accepted_images_count(tmp_path: Path) -> None:
    """Colour images quarantined (an unknown label, a duplicate) do not vote."""
    root = tmp_path / "source"
    plant(root, [gray_png(i) for i in range(40)])
    for index in range(6):
        write(root / "other" / f"colour_{index}.png", colour_png(index))  # unknown_label
        write(
            root / "a" / f"copy_{index}.png", (root / "a" / f"img_{2 * index:03d}.png").read_bytes()
        )
    layout = Layout(tmp_path / "work")
    data = with_overrides(Params(), {"data.classes": list(CLASSES)}).data
    table = validate(ingest(str(root), {}, layout.raw_dir), data, layout.raw_files)
    report = write_outputs(table, layout, data)
    assert report["quarantined"] == 12
    assert (report["channels"]["accepted"], report["channels"]["channels"]) == (40, 1)


@pytest.mark.parametrize(("channels", "maker"), [(1, colour_png), (3, gray_png)])
def test_an_explicit_channel_count_is_honoured(tmp_path: Path, channels: int, maker: Any) -> None:
    root = tmp_path / "source"
    plant(root, [maker(i) for i in range(10)])
    table, report = validated(root, tmp_path / "work", channels)
    choice = report["channels"]
    assert (choice["requested"], choice["channels"]) == (channels, channels)
    assert choice["reason"].startswith(f"data.channels: {channels} in params.yaml; ")
    assert set(table["channels"]) == {channels}


def test_the_digits_stay_grayscale(tmp_path: Path) -> None:
    source = tmp_path / "digits"
    write_digits(source)
    for folder in source.iterdir():  # 20 a class is enough: every digit is an L-mode PNG
        for extra in sorted(folder.iterdir())[20:]:
            extra.unlink()
    _table, report = validated(source, tmp_path / "work")
    assert report["channels"]["channels"] == 1
    assert report["channels"]["colour_images"] == 0


# --------------------------------------------------------------------------- split reads it


def test_split_packs_at_the_channels_validate_chose(tmp_path: Path) -> None:
    root = tmp_path / "source"
    plant(root, [colour_png(i) for i in range(6)] + [gray_png(100 + i) for i in range(34)])
    work = tmp_path / "work"
    run_stages(work, {"data": {"source": str(root)}}, ("ingest", "validate", "split"))

    layout = Layout(work)
    meta = PackedMeta.load(layout.packed_meta)
    assert meta.channels == 3 and len(meta.mean) == len(meta.std) == 3
    assert np.load(layout.packed_dir / "train_x.npy").shape[1] == 3
    report = json.loads(layout.split_report.read_text())
    assert report["channels"] == 3
    assert report["channels_reason"] == (
        "auto: 6 of 40 accepted images (15.0%) carry colour (>= 5%) -> RGB"
    )


def test_split_refuses_a_decision_made_for_other_params(tmp_path: Path) -> None:
    """validate ran with auto, then params.yaml says 3: split stops rather than pack stale."""
    root = tmp_path / "source"
    plant(root, [gray_png(i) for i in range(40)])
    work = tmp_path / "work"
    run_stages(work, {"data": {"source": str(root)}}, ("ingest", "validate"))
    overrides = {"data": {"source": str(root), "channels": 3}}
    params = merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), overrides)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = run(
        [sys.executable, "-m", "tasks.split"], work, check=False, env={"PYTHONPATH": str(REPO_ROOT)}
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "resolved data.channels=auto, params.yaml now says 3" in lines[0]
    assert "rerun validate" in lines[0]
    assert not Layout(work).packed_meta.exists()
