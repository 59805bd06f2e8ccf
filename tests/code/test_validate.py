"""The validate stage on real files: every quarantine reason, mode conversion, safety and limits.

No mocks: sources are real folders and CSV manifests on disk, run through the real ingest and
validate functions (or their `python -m` entry points in a temporary repository copy). The
decompression-bomb test is in tests/system/test_validate_pipeline.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile
from PIL.PngImagePlugin import PngInfo

from tasks.core.config import DataConfig, Params, with_overrides
from tasks.core.layout import Layout
from tasks.data import images
from tasks.data.images import UndecodableImage, load_converted, probe, to_array
from tasks.data.sources import IGNORED_REASONS
from tasks.ingest import ingest
from tasks.validate import IGNORED_EXAMPLES, REASONS, validate, write_outputs
from tests.conftest import REPO_ROOT, run, write_params
from tests.images import entries_under, noise, plant_not_data, png_bytes, write

GOOD_LABELS = ["cat", "dog"]
TOKEN = "OUTSIDE-THE-ROOT-" + uuid.uuid4().hex


# --------------------------------------------------------------------------- helpers


def data_config(**overrides: object) -> DataConfig:
    """The real defaults with `overrides`, validated the way params.yaml overrides are."""
    return with_overrides(Params(), {f"data.{k}": v for k, v in overrides.items()}).data


def secret_png() -> bytes:
    """A valid PNG carrying TOKEN in a text chunk, so any copy of it can be found."""
    info = PngInfo()
    info.add_text("secret", TOKEN)
    return png_bytes(noise(999), pnginfo=info)


def mode_images() -> dict[str, tuple[bytes, str]]:
    """Valid images in modes validate must convert, not reject: name -> (bytes, PIL mode)."""
    rgb = noise(101, (16, 16, 3))
    palette = Image.fromarray(noise(102, (16, 16, 3))).quantize(colors=16)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    rgba = np.dstack([noise(103, (16, 16, 3)), noise(104)])
    la = np.dstack([noise(105), noise(106)])
    gray16 = np.random.default_rng(107).integers(0, 65536, (16, 16)).astype(np.uint16)
    cmyk = io.BytesIO()
    Image.fromarray(noise(108, (16, 16, 3))).convert("CMYK").save(cmyk, "JPEG", quality=90)
    bilevel = io.BytesIO()
    Image.fromarray(noise(109) > 127).save(bilevel, "PNG")
    return {
        "palette.png": (buffer.getvalue(), "P"),
        "rgba.png": (png_bytes(rgba, "RGBA"), "RGBA"),
        "la.png": (png_bytes(la, "LA"), "LA"),
        "gray16.png": (png_bytes(gray16), "I;16"),
        "cmyk.jpg": (cmyk.getvalue(), "CMYK"),
        "rgb.png": (png_bytes(rgb), "RGB"),
        "bilevel.png": (bilevel.getvalue(), "1"),
    }


def build_source(tmp_path: Path, layout: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Plant good and bad files; returns (data.source, expected reason per path, mode per path).

    An expected reason of '' means accepted.
    """
    root = tmp_path / "src"
    outside = tmp_path / "outside"
    write(outside / "secret.png", secret_png())
    write(outside / "dir" / "inner.png", secret_png())

    files: dict[str, bytes] = {}  # path under root -> bytes (written for both layouts)
    labels: dict[str, str] = {}
    expected: dict[str, str] = {}
    modes: dict[str, str] = {}

    def plant(path: str, data: bytes, reason: str, label: str | None = None) -> None:
        files[path] = data
        labels[path] = path.split("/")[0] if label is None else label
        expected[path] = reason

    for index in range(6):
        for number, label in enumerate(GOOD_LABELS):
            plant(f"{label}/good_{index}.png", png_bytes(noise(1000 + 10 * index + number)), "")
    for number, (name, (data, mode)) in enumerate(sorted(mode_images().items())):
        path = f"{GOOD_LABELS[number % 2]}/{name}"
        plant(path, data, "")
        modes[path] = mode

    big_noise = png_bytes(noise(7, (64, 64)))
    plant("cat/empty.png", b"", "undecodable")
    plant("cat/truncated.png", big_noise[: len(big_noise) // 2], "undecodable")
    plant("dog/text.png", b"this is a text file, not a PNG\n" * 4, "undecodable")
    plant("cat/tiny.png", png_bytes(noise(8, (4, 4))), "too_small")
    plant("dog/huge.png", png_bytes(noise(9, (200, 200))), "too_large")
    plant("bird/stray.png", png_bytes(noise(10)), "unknown_label")
    # exact duplicates, same label: the first in sorted path order is kept
    duplicate = png_bytes(noise(11))
    plant("dog/dup_b.png", duplicate, "duplicate")
    plant("dog/dup_a.png", duplicate, "")
    plant("dog/dup_c.png", duplicate, "duplicate")
    # the same bytes under two labels: every copy quarantined
    conflict = png_bytes(noise(12))
    plant("cat/conflict.png", conflict, "label_conflict")
    plant("dog/conflict.png", conflict, "label_conflict")
    plant("dog/conflict_2.png", conflict, "label_conflict")

    if layout == "folder":
        plant("no_label.png", png_bytes(noise(13)), "unknown_label", label="")
    else:
        plant("misc/no_label.png", png_bytes(noise(13)), "unknown_label", label="")

    for path, data in files.items():
        write(root / path, data)
    # symlinks that escape the root: to a file, and to a directory
    (root / "cat" / "escape.png").symlink_to(outside / "secret.png")
    (root / "cat" / "linkdir").symlink_to(outside / "dir", target_is_directory=True)
    expected["cat/escape.png"] = "unsafe_path"
    labels["cat/escape.png"] = "cat"
    # a symlink to nothing inside the root: missing, in both layouts
    (root / "dog" / "gone.png").symlink_to(root / "dog" / "deleted.png")
    expected["dog/gone.png"] = "missing"
    labels["dog/gone.png"] = "dog"

    if layout == "folder":
        expected["cat/linkdir"] = "unsafe_path"  # the folder itself is listed, never entered
        return str(root), expected, modes

    expected["cat/linkdir/inner.png"] = "unsafe_path"
    labels["cat/linkdir/inner.png"] = "cat"
    for path in ("../outside/secret.png", str(outside / "secret.png")):
        expected[path] = "unsafe_path"
        labels[path] = "cat"
    expected["cat/missing.png"] = "missing"  # listed but absent: not a broken image
    labels["cat/missing.png"] = "cat"
    # list rows in reverse order: the kept duplicate must follow the sorted paths, not the CSV
    rows = [{"path": path, "label": labels[path]} for path in sorted(expected, reverse=True)]
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return str(manifest), expected, modes


# --------------------------------------------------------------------------- every reason


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["folder", "manifest"])
def test_every_bad_file_gets_exactly_its_reason(tmp_path: Path, layout: str, channels: int) -> None:
    source, expected, modes = build_source(tmp_path, layout)
    work = tmp_path / "work"
    work.mkdir()
    stage_layout = Layout(work)
    files_dir = stage_layout.raw_files

    manifest = ingest(source, {}, stage_layout.raw_dir)
    config = data_config(min_size=8, max_pixels=10_000, classes=GOOD_LABELS, channels=channels)
    table = validate(manifest, config, files_dir=files_dir)
    report = write_outputs(table, stage_layout, config)

    # every planted file is decided, each with exactly the expected reason
    got = dict(zip(table["path"], table["reason"], strict=True))
    assert sorted(got) == sorted(expected)
    wrong = {path: (got[path], want) for path, want in expected.items() if got[path] != want}
    assert not wrong, f"(got, expected) per path: {wrong}"
    quarantined_good = [p for p, want in expected.items() if want == "" and got[p] != ""]
    assert not quarantined_good
    details = dict(zip(table["path"], table["detail"], strict=True))
    assert all(details[p] for p, want in expected.items() if want), "a reason needs a detail"
    assert "dog/dup_a.png" in details["dog/dup_b.png"]

    # counts: accepted + quarantined == total, and the report's reasons are the exact tallies
    want_reasons = Counter(reason for reason in expected.values() if reason)
    assert report["total"] == len(expected)
    assert report["accepted"] + report["quarantined"] == report["total"]
    assert report["accepted"] == sum(1 for reason in expected.values() if reason == "")
    assert report["reasons"] == {reason: want_reasons.get(reason, 0) for reason in REASONS}
    assert set(want_reasons) == set(REASONS), "the fixture must exercise every reason"

    accepted = pd.read_csv(stage_layout.validated_manifest, dtype=str, keep_default_na=False)
    assert sorted(accepted["path"]) == sorted(p for p, want in expected.items() if want == "")
    quarantine_dir = stage_layout.quarantine_dir
    quarantine = pd.read_csv(quarantine_dir / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(quarantine.columns) == ["path", "label", "reason", "detail"]
    assert dict(zip(quarantine["path"], quarantine["reason"], strict=True)) == {
        p: want for p, want in expected.items() if want
    }
    assert len(accepted) + len(quarantine) == len(expected)

    # quarantined files that were copied in are kept for inspection, byte for byte
    sha = dict(zip(table["path"], table["sha256"], strict=True))
    for path in quarantine["path"]:
        copy = quarantine_dir / "files" / path
        if sha[path]:
            assert copy.read_bytes() == (files_dir / path).read_bytes(), path
    for decodable in ("cat/tiny.png", "dog/huge.png", "dog/dup_b.png", "cat/conflict.png"):
        assert (quarantine_dir / "files" / decodable).is_file(), decodable

    # other modes were accepted, their original mode recorded, and they convert to `channels`
    recorded = dict(zip(table["path"], table["mode"], strict=True))
    for path, mode in modes.items():
        assert got[path] == "" and recorded[path] == mode, path
        array = load_converted(files_dir / path, channels)
        assert array.dtype == np.uint8 and array.shape == (16, 16, channels), path
    assert set(table.loc[table["reason"] == "", "channels"]) == {channels}

    # nothing outside the root was copied anywhere
    for copied in work.rglob("*"):
        if copied.is_file():
            assert TOKEN.encode() not in copied.read_bytes(), copied


# ------------------------------------------------------- ignored: every entry accounted for


def test_every_entry_under_a_folder_source_is_accounted_for(tmp_path: Path) -> None:
    """accepted + quarantined + ignored == every entry on disk, ignored counted per reason."""
    root, outside = tmp_path / "src", tmp_path / "outside"
    for index in range(6):
        write(root / GOOD_LABELS[index % 2] / f"good_{index}.png", png_bytes(noise(index)))
    write(root / "cat" / "broken.png", b"not an image")  # quarantined: undecodable
    write(outside / "secret.png", secret_png())
    (root / "dog" / "elsewhere").symlink_to(outside, target_is_directory=True)  # unsafe_path
    want_ignored = plant_not_data(root, outside)
    for index in range(30):  # more than the report shows
        write(root / ".git" / "objects" / f"{index:02d}" / "object", b"x")
        want_ignored[f".git/objects/{index:02d}/object"] = "hidden"

    layout = Layout(tmp_path / "work")
    manifest = ingest(str(root), {}, layout.raw_dir)
    config = data_config(min_size=8, classes=GOOD_LABELS)
    table = validate(manifest, config, layout.raw_files)
    report = write_outputs(table, layout, config)

    on_disk = entries_under(root)
    ignored = report.get("ignored", {})
    counted = report["accepted"] + report["quarantined"] + ignored.get("count", 0)
    assert counted == len(on_disk), f"{len(on_disk) - counted} of {len(on_disk)} entries lost"
    assert report["accepted"] == 6
    assert report["reasons"]["undecodable"] == report["reasons"]["unsafe_path"] == 1
    assert ignored["count"] == len(want_ignored)
    want_counts = Counter(want_ignored.values())
    assert ignored["reasons"] == {reason: want_counts[reason] for reason in IGNORED_REASONS}
    examples = ignored["examples"]
    assert len(examples) == IGNORED_EXAMPLES == 20
    assert {example["reason"] for example in examples} == set(want_counts), "every reason shown"
    for example in examples:
        assert want_ignored[example["path"]] == example["reason"] and example["detail"]
    # the hidden checkpoint is a valid image, but it was never ingested, so never accepted
    assert not any(".ipynb_checkpoints" in path for path in table["path"])


# --------------------------------------------------------------- only bad bytes are undecodable


def _small_folder(tmp_path: Path) -> tuple[Layout, pd.DataFrame]:
    root = tmp_path / "src"
    for index in range(4):
        write(root / GOOD_LABELS[index % 2] / f"good_{index}.png", png_bytes(noise(index)))
    layout = Layout(tmp_path / "work")
    return layout, ingest(str(root), {}, layout.raw_dir)


def test_a_bug_in_the_conversion_stops_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in sixfold's own code is not the file's fault: no image is quarantined for it."""
    layout, manifest = _small_folder(tmp_path)

    def buggy_to_array(image: Image.Image, channels: int) -> np.ndarray:
        raise KeyError("a bug in sixfold's conversion")

    monkeypatch.setattr(images, "to_array", buggy_to_array)
    with pytest.raises(KeyError, match="a bug in sixfold"):
        load_converted(layout.raw_files / "cat/good_0.png", 3)
    with pytest.raises(KeyError, match="a bug in sixfold"):
        validate(manifest, data_config(min_size=8), layout.raw_files)


@pytest.mark.parametrize("where", ["open", "load"])
def test_a_memory_error_stops_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Running out of memory says nothing about the file: it stops the stage."""
    layout, manifest = _small_folder(tmp_path)

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    if where == "open":
        monkeypatch.setattr(Image, "open", out_of_memory)
        with pytest.raises(MemoryError):
            probe(layout.raw_files / "cat/good_0.png")
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
        with pytest.raises(MemoryError):
            load_converted(layout.raw_files / "cat/good_0.png", 3)
    with pytest.raises(MemoryError):
        validate(manifest, data_config(min_size=8), layout.raw_files)


def test_a_raw_file_gone_missing_stops_validate(tmp_path: Path) -> None:
    """A file ingest copied and that is gone is a broken data/raw, not an undecodable image."""
    layout, manifest = _small_folder(tmp_path)
    (layout.raw_files / "cat" / "good_0.png").unlink()
    with pytest.raises(FileNotFoundError):
        validate(manifest, data_config(min_size=8), layout.raw_files)


def corrupt_images() -> dict[str, bytes]:
    """Truncated files of several formats (what Pillow 13 reports as OSError, ValueError, ...)."""
    picture = Image.fromarray(noise(77, (40, 48, 3)))
    corrupt: dict[str, bytes] = {"empty.png": b"", "text.png": b"not an image\n" * 8}
    for name, save in {
        "png": {"format": "PNG"},
        "jpg": {"format": "JPEG"},
        "gif": {"format": "GIF"},
        "bmp": {"format": "BMP"},
        "tif": {"format": "TIFF"},
        "lzw.tif": {"format": "TIFF", "compression": "tiff_lzw"},
        "webp": {"format": "WEBP"},
        "ppm": {"format": "PPM"},
    }.items():
        buffer = io.BytesIO()
        picture.save(buffer, **save)
        data = buffer.getvalue()
        corrupt[f"half.{name}"] = data[: len(data) // 2]
        corrupt[f"header.{name}"] = data[:20]
        corrupt[f"tail_cut.{name}"] = data[: -len(data) // 10]
    return corrupt


def test_corrupt_files_of_several_formats_are_still_undecodable(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for index in range(4):
        write(root / GOOD_LABELS[index % 2] / f"good_{index}.png", png_bytes(noise(index)))
    corrupt = corrupt_images()
    for name, data in corrupt.items():
        write(root / "cat" / name, data)
    layout = Layout(tmp_path / "work")
    manifest = ingest(str(root), {}, layout.raw_dir)
    table = validate(manifest, data_config(min_size=8), layout.raw_files)

    reasons = dict(zip(table["path"], table["reason"], strict=True))
    assert {path: reasons[f"cat/{path}"] for path in corrupt} == dict.fromkeys(
        corrupt, "undecodable"
    )
    assert all(reasons[f"{GOOD_LABELS[i % 2]}/good_{i}.png"] == "" for i in range(4))
    details = table.loc[table["reason"] == "undecodable", "detail"]
    assert details.str.match(r"^\w+(Error|Exception)?: ").all(), details.tolist()
    assert not details.str.contains(str(tmp_path)).any(), "a detail must not name a machine path"


def test_every_mode_a_decoder_gives_converts_or_is_undecodable(tmp_path: Path) -> None:
    """LAB (CIELab TIFF) converts to 1 and 3 channels; a mode to_array cannot convert is a bad
    image, not a crash."""
    Image.new("LAB", (16, 16), (50, 10, 200)).save(tmp_path / "lab.tif")
    with Image.open(tmp_path / "lab.tif") as image:
        assert image.mode == "LAB"
    for channels in (1, 3):
        assert load_converted(tmp_path / "lab.tif", channels).shape == (16, 16, channels)
    with pytest.raises(UndecodableImage, match="mode La is not supported"):
        to_array(Image.new("La", (4, 4)), 3)


# --------------------------------------------------------------------------- never opened

FIFO_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tasks.core.config import DataConfig
    from tasks.ingest import ingest
    from tasks.validate import validate
    out = Path("raw")
    table = validate(ingest(sys.argv[1], {}, out), DataConfig(), files_dir=out / "files")
    table[["path", "reason"]].to_csv("decided.csv", index=False)
    """
)


@pytest.mark.parametrize("layout", ["folder", "manifest"])
def test_no_file_outside_the_root_is_opened(tmp_path: Path, layout: str) -> None:
    """Opening a FIFO for reading blocks until a writer comes: finishing proves it was not."""
    os.mkfifo(tmp_path / "pipe.png")
    root = tmp_path / "src"
    for index in range(3):
        write(root / "cat" / f"good_{index}.png", png_bytes(noise(index)))
    (root / "cat" / "pipe.png").symlink_to(tmp_path / "pipe.png")
    source = str(root)
    expected_unsafe = {"cat/pipe.png"}
    if layout == "manifest":
        rows = [f"cat/good_{index}.png,cat" for index in range(3)]
        rows += ["cat/pipe.png,cat", "../pipe.png,cat"]
        (root / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        source = str(root / "manifest.csv")
        expected_unsafe.add("../pipe.png")

    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        result = subprocess.run(
            [sys.executable, "-c", FIFO_SCRIPT, source],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ingest/validate hung: a FIFO outside the source root was opened")
    assert result.returncode == 0, result.stderr[-4000:]
    decided = pd.read_csv(tmp_path / "decided.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(decided["path"], decided["reason"], strict=True))
    assert {p for p, r in reasons.items() if r == "unsafe_path"} == expected_unsafe
    assert all(reasons[f"cat/good_{index}.png"] == "" for index in range(3))


# ---------------------------------------------------------------- stage exit and warnings


def _folder(root: Path, counts: dict[str, int], bad: int = 0) -> Path:
    seed = 0
    for label, count in counts.items():
        for index in range(count):
            seed += 1
            write(root / label / f"img_{index:03d}.png", png_bytes(noise(seed)))
    for index in range(bad):
        write(root / GOOD_LABELS[index % 2] / f"bad_{index:03d}.png", b"not an image %d" % index)
    return root


@pytest.mark.parametrize(("good", "bad", "fails"), [(4, 6, True), (8, 2, False)])
def test_too_much_quarantined_fails_the_stage(
    repo: Path, tmp_path: Path, good: int, bad: int, fails: bool
) -> None:
    """6/10 rejected > 0.2 fails; 2/10 == 0.2 is exactly the limit and passes."""
    source = _folder(tmp_path / "mostly-bad", {"cat": good // 2, "dog": good - good // 2}, bad)
    write_params(repo, {"data": {"source": str(source), "max_quarantined_fraction": 0.2}})
    run(["python", "-m", "tasks.ingest"], repo)
    result = run(["python", "-m", "tasks.validate"], repo, check=False)

    report = json.loads((repo / "reports" / "data" / "validation.json").read_text())
    assert report["quarantined"] == bad and report["reasons"]["undecodable"] == bad
    if fails:
        # ValidationFailed is a UserError: exit 1 with one `error:` line, no traceback
        assert result.returncode == 1, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr[-3000:]
        assert errors[0].startswith("error: 6/10 files quarantined")
        assert "data.max_quarantined_fraction" in errors[0]
        assert "reports/data/validation.json" in errors[0]
        assert "Traceback" not in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "max_quarantined_fraction" not in result.stderr


def test_listed_files_that_do_not_exist_are_counted_as_missing(tmp_path: Path) -> None:
    """A manifest whose listed files are partly absent: the stages say `missing`, not
    `undecodable`, on the console, in validation.json and in the quarantine manifest."""
    root = tmp_path / "images"
    rows = []
    for index in range(40):
        path = f"{GOOD_LABELS[index % 2]}/img_{index:02d}.png"
        if index % 7 != 3:  # 6 of 40 listed files (15 %) were never there
            write(root / path, png_bytes(noise(index)))
        rows.append({"path": path, "label": GOOD_LABELS[index % 2]})
    write(root / "cat" / "broken.png", b"not an image")  # a real undecodable file, for contrast
    rows.append({"path": "cat/broken.png", "label": "cat"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    absent = sorted(row["path"] for row in rows if not (root / row["path"]).exists())
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(
        (REPO_ROOT / "params.yaml")
        .read_text()
        .replace("source: sklearn:digits", f"source: {root / 'manifest.csv'}")
    )
    environment = {"PYTHONPATH": str(REPO_ROOT)}
    ingested = run([sys.executable, "-m", "tasks.ingest"], work, env=environment)
    validated = run([sys.executable, "-m", "tasks.validate"], work, env=environment)

    assert f"flagged for quarantine: missing={len(absent)})" in ingested.stdout
    summary = validated.stdout.strip().splitlines()[-1]
    assert f"quarantined (undecodable=1, missing={len(absent)})" in summary, summary
    layout = Layout(work)
    report = json.loads(layout.validation_report.read_text())
    assert report["reasons"]["missing"] == len(absent) and report["reasons"]["undecodable"] == 1
    quarantine = pd.read_csv(layout.quarantine_dir / "manifest.csv", keep_default_na=False)
    missing_rows = quarantine[quarantine["reason"] == "missing"]
    assert sorted(missing_rows["path"]) == absent
    assert (missing_rows["detail"] == "listed file does not exist").all()
    assert report["accepted"] + report["quarantined"] == len(rows)


@pytest.mark.parametrize(("threshold", "warns"), [(3.0, True), (10.0, False)])
def test_class_imbalance_warns(repo: Path, tmp_path: Path, threshold: float, warns: bool) -> None:
    source = _folder(tmp_path / "imbalanced", {"cat": 10, "dog": 3})  # 3.3x
    write_params(repo, {"data": {"source": str(source), "imbalance_warn": threshold}})
    run(["python", "-m", "tasks.ingest"], repo)
    result = run(["python", "-m", "tasks.validate"], repo)

    assert ("class imbalance" in result.stderr) is warns, result.stderr[-3000:]
    if warns:
        assert "data.imbalance_warn=3.0" in result.stderr
    report = json.loads((repo / "reports" / "data" / "validation.json").read_text())
    assert report["class_balance"]["counts"] == {"cat": 10, "dog": 3}
