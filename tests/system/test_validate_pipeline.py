"""End to end: the validate stage judges a decompression bomb from its header, in bounded memory;
accounts for every entry of a folder source (accepted, quarantined or ignored); and stops with a
traceback, quarantining nothing, when the fault is sixfold's rather than a file's.

Runs `python -m tasks.ingest` and `python -m tasks.validate` in a temporary repository copy.
"""

from __future__ import annotations

import json
import struct
import textwrap
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import run, write_params
from tests.images import entries_under, noise, plant_not_data, png_bytes, write


def huge_gray_png(path: Path, side: int = 20_000) -> None:
    """A side x side 8-bit grayscale PNG of zeros, streamed to disk without an image in memory."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(body, zlib.crc32(kind)) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * side  # filter type 0, then one byte per pixel
    parts = [compressor.compress(row) for _ in range(side)]
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(chunk(b"IHDR", header))
        handle.write(chunk(b"IDAT", idat))
        handle.write(chunk(b"IEND", b""))


MEASURE = textwrap.dedent(
    """
    import resource, subprocess, sys
    result = subprocess.run([sys.executable, "-m", "tasks.validate"])
    print("maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
    sys.exit(result.returncode)
    """
)


@pytest.mark.slow
def test_a_decompression_bomb_is_judged_from_its_header(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "bomb-source"
    huge_gray_png(source / "cat" / "bomb.png")
    # a real PNG header: PIL reads it (its bomb guard lifted here, in this process only)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(source / "cat" / "bomb.png") as image:
        assert image.size == (20_000, 20_000) and image.mode == "L"
    monkeypatch.undo()
    for index in range(6):
        write(source / ("cat", "dog")[index % 2] / f"good_{index}.png", png_bytes(noise(index)))
    write_params(repo, {"data": {"source": str(source)}})

    run(["python", "-m", "tasks.ingest"], repo)
    result = run(["python", "-c", MEASURE], repo)
    peak_kib = int(result.stdout.split("maxrss_kib")[-1].split()[0])
    assert peak_kib * 1024 < 500 * 10**6, f"validate peaked at {peak_kib / 1024:.0f} MiB"

    quarantine = pd.read_csv(repo / "data" / "quarantine" / "manifest.csv", dtype=str)
    reasons = dict(zip(quarantine["path"], quarantine["reason"], strict=True))
    assert reasons == {"cat/bomb.png": "too_large"}
    report = json.loads((repo / "reports" / "data" / "validation.json").read_text())
    assert report["accepted"] == 6 and report["reasons"]["too_large"] == 1


@pytest.mark.slow
def test_the_stages_account_for_every_entry_of_a_folder(repo: Path, tmp_path: Path) -> None:
    source, outside = tmp_path / "cluttered", tmp_path / "outside"
    for index in range(6):
        write(source / ("cat", "dog")[index % 2] / f"good_{index}.png", png_bytes(noise(index)))
    write(outside / "x.png", png_bytes(noise(99)))
    (source / "dog" / "escape").symlink_to(outside, target_is_directory=True)  # unsafe_path
    ignored = plant_not_data(source, outside)
    write_params(repo, {"data": {"source": str(source), "max_quarantined_fraction": 0.5}})

    ingested = run(["python", "-m", "tasks.ingest"], repo)
    validated = run(["python", "-m", "tasks.validate"], repo)

    said = "7 ignored (hidden=6, symlinked_folder=1)"
    assert said in ingested.stdout and said in validated.stdout, validated.stdout
    assert len(ignored) == 7
    listed = pd.read_csv(repo / "data" / "raw" / "ignored.csv", dtype=str, keep_default_na=False)
    assert dict(zip(listed["path"], listed["reason"], strict=True)) == ignored
    report = json.loads((repo / "reports" / "data" / "validation.json").read_text())
    assert (report["accepted"], report["quarantined"]) == (6, 1)
    total = report["accepted"] + report["quarantined"] + report["ignored"]["count"]
    assert total == len(entries_under(source))


BUGGY_VALIDATE = textwrap.dedent(
    """
    from tasks.core.runner import stage_main
    from tasks.data import images
    from tasks.validate import main

    def buggy_to_array(image, channels):
        raise KeyError("a bug in sixfold's conversion")

    images.to_array = buggy_to_array
    stage_main(main)
    """
)


@pytest.mark.slow
def test_a_bug_in_the_conversion_stops_the_stage_with_a_traceback(
    repo: Path, tmp_path: Path
) -> None:
    source = tmp_path / "fine"
    for index in range(6):
        write(source / ("cat", "dog")[index % 2] / f"good_{index}.png", png_bytes(noise(index)))
    write_params(repo, {"data": {"source": str(source)}})
    run(["python", "-m", "tasks.ingest"], repo)

    result = run(["python", "-c", BUGGY_VALIDATE], repo, check=False)

    assert result.returncode != 0
    assert "Traceback" in result.stderr and "KeyError" in result.stderr, result.stderr[-3000:]
    assert "a bug in sixfold's conversion" in result.stderr
    # nothing was quarantined or reported for it
    assert not (repo / "data" / "quarantine").exists()
    assert not (repo / "reports" / "data" / "validation.json").exists()
