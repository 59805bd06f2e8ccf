"""The ingest stage and the source fingerprint, on real files, a real S3 API server and no mocks.

Every source layout (sklearn digits, a class-folder tree, a CSV manifest; local and S3) is built
for real, ingested, and the copies are checked byte for byte against what the manifest claims.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.data.sources import IGNORED_COLUMNS, IGNORED_REASONS, SourceError
from tasks.ingest import MANIFEST_COLUMNS, ingest
from tasks.source import refresh, source_fingerprint
from tests.conftest import REPO_ROOT
from tests.images import entries_under, plant_not_data

SECRET = b"OUTSIDE-THE-ROOT-" + uuid.uuid4().hex.encode()


# --------------------------------------------------------------------------- helpers


def png_bytes(value: int, size: int = 12) -> bytes:
    """A small grayscale PNG whose pixels all equal `value` (distinct values, distinct bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def write_png(path: Path, value: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(value)
    path.write_bytes(data)
    return data


def read_manifest(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "manifest.csv", dtype=str, keep_default_na=False)


def read_ignored(out_dir: Path) -> dict[str, str]:
    """data/raw/ignored.csv as path -> reason (its columns checked)."""
    table = pd.read_csv(out_dir / "ignored.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == IGNORED_COLUMNS
    assert table["detail"].str.len().gt(0).all(), "an ignored entry must say why"
    return dict(zip(table["path"], table["reason"], strict=True))


def rows_by_path(manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in manifest.to_dict(orient="records")}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_copied_bytes(out_dir: Path) -> list[bytes]:
    return [path.read_bytes() for path in out_dir.rglob("*") if path.is_file()]


def assert_copies_match(out_dir: Path, manifest: pd.DataFrame) -> None:
    """Every ok row: its copy exists, and sha256/bytes in the manifest describe that copy."""
    for row in manifest.to_dict(orient="records"):
        copy = out_dir / "files" / row["path"]
        inside = copy.resolve().is_relative_to((out_dir / "files").resolve())
        if row["status"] != "ok":
            # An absolute or '..' path names a place outside out_dir: the SECRET scans cover it.
            problem = f"{row['path']} has status {row['status']} but was copied"
            assert not inside or not copy.exists(), problem
            continue
        data = copy.read_bytes()
        assert row["sha256"] == sha256(data), row["path"]
        assert int(row["bytes"]) == len(data) == copy.stat().st_size, row["path"]


def assert_unsafe(row: dict[str, str]) -> None:
    assert row["status"] == "unsafe_path", row
    assert row["sha256"] == "", row
    assert int(row["bytes"]) == -1, row
    assert row["detail"], "an unsafe path must say why"


# --------------------------------------------------------------------------- sklearn:digits


def test_digits_are_written_as_pngs_in_class_folders(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    out_dir = tmp_path / "raw"
    returned = ingest("sklearn:digits", {}, out_dir)
    manifest = read_manifest(out_dir)

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert {"path", "label", "sha256", "bytes", "status", "detail"} <= set(manifest.columns)
    assert len(manifest) == len(returned) == 1797
    assert (manifest["status"] == "ok").all()
    assert sorted(manifest["label"].unique()) == [str(d) for d in range(10)]
    assert manifest["path"].tolist() == sorted(manifest["path"])

    pngs = sorted((out_dir / "files").rglob("*.png"))
    assert len(pngs) == 1797
    for png in pngs:
        relative = png.relative_to(out_dir / "files")
        assert len(relative.parts) == 2 and relative.parts[0] in manifest["label"].values

    # Every label is the folder its file sits in, and the class counts are scikit-learn's.
    assert (manifest["path"].str.split("/").str[0] == manifest["label"]).all()
    expected_counts = np.bincount(load_digits().target, minlength=10)
    counts = manifest["label"].astype(int).value_counts().sort_index().to_numpy()
    assert counts.tolist() == expected_counts.tolist()

    first = manifest.iloc[0]
    data = (out_dir / "files" / first["path"]).read_bytes()
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert int(first["bytes"]) == len(data)
    assert_copies_match(out_dir, manifest)

    with Image.open(out_dir / "files" / first["path"]) as image:
        assert image.size == (8, 8) and image.mode == "L"


def test_ingest_replaces_what_a_previous_run_left(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_png(source / "a" / "one.png", 10)
    out_dir = tmp_path / "raw"
    stale = out_dir / "files" / "old" / "stale.png"
    write_png(stale, 99)

    ingest(str(source), {}, out_dir)

    assert not stale.exists()
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()) == [
        "files/a/one.png",
        "ignored.csv",
        "manifest.csv",
    ]


# --------------------------------------------------------------------------- local class folders


def test_local_class_folders(tmp_path: Path) -> None:
    source = tmp_path / "src"
    contents = {
        "cat/c1.png": write_png(source / "cat" / "c1.png", 10),
        "cat/c2.png": write_png(source / "cat" / "c2.png", 20),
        "dog/d1.png": write_png(source / "dog" / "d1.png", 30),
        "owl/nested/o1.png": write_png(source / "owl" / "nested" / "o1.png", 40),
        "loose.png": write_png(source / "loose.png", 50),
    }
    (source / ".DS_Store").write_bytes(b"finder clutter")
    (source / "cat" / ".DS_Store").write_bytes(b"finder clutter")

    out_dir = tmp_path / "raw"
    manifest = ingest(str(source), {}, out_dir)
    on_disk = read_manifest(out_dir)

    assert on_disk["path"].tolist() == sorted(contents)
    assert manifest["path"].tolist() == sorted(contents)
    labels = dict(zip(on_disk["path"], on_disk["label"], strict=True))
    assert labels == {
        "cat/c1.png": "cat",
        "cat/c2.png": "cat",
        "dog/d1.png": "dog",
        "owl/nested/o1.png": "owl",
        "loose.png": "",
    }
    assert (on_disk["status"] == "ok").all()
    assert not any(".DS_Store" in path for path in on_disk["path"])
    assert not list(out_dir.rglob(".DS_Store"))
    for relative, data in contents.items():
        assert (out_dir / "files" / relative).read_bytes() == data
        assert labels[relative] is not None
    assert_copies_match(out_dir, on_disk)
    assert set(on_disk["sha256"]) == {sha256(data) for data in contents.values()}


def test_folder_symlink_to_a_file_outside_the_root_is_unsafe(tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET)
    source = tmp_path / "src"
    inside = write_png(source / "cat" / "ok.png", 10)
    (source / "cat" / "sneaky.png").symlink_to(outside)
    # A symlink that stays inside the root is fine.
    (source / "cat" / "alias.png").symlink_to(source / "cat" / "ok.png")

    out_dir = tmp_path / "raw"
    ingest(str(source), {}, out_dir)
    rows = rows_by_path(read_manifest(out_dir))

    assert set(rows) == {"cat/ok.png", "cat/sneaky.png", "cat/alias.png"}
    assert_unsafe(rows["cat/sneaky.png"])
    assert rows["cat/sneaky.png"]["label"] == "cat"
    assert rows["cat/ok.png"]["status"] == "ok"
    assert rows["cat/alias.png"]["status"] == "ok"
    assert (out_dir / "files" / "cat" / "alias.png").read_bytes() == inside
    assert SECRET not in b"".join(all_copied_bytes(out_dir))


def test_folder_symlinked_directory_outside_the_root_is_unsafe(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(SECRET)
    source = tmp_path / "src"
    write_png(source / "cat" / "ok.png", 10)
    (source / "cat" / "linked").symlink_to(elsewhere, target_is_directory=True)

    out_dir = tmp_path / "raw"
    ingest(str(source), {}, out_dir)
    rows = rows_by_path(read_manifest(out_dir))

    assert_unsafe(rows["cat/linked"])
    assert rows["cat/ok.png"]["status"] == "ok"
    assert SECRET not in b"".join(all_copied_bytes(out_dir))


def _cluttered_source(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Images, an escaping symlinked folder (quarantined) and clutter (ignored, with reasons)."""
    source = tmp_path / "src"
    for index, label in enumerate(["cat", "cat", "dog", "dog"]):
        write_png(source / label / f"{label}_{index}.png", 10 + index)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(SECRET)
    (source / "dog" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (source / "cat" / ".sneaky.png").symlink_to(elsewhere / "secret.png")  # hidden: ignored
    ignored = plant_not_data(source, elsewhere) | {"cat/.sneaky.png": "hidden"}
    return source, ignored


def test_a_folder_source_accounts_for_every_entry(tmp_path: Path) -> None:
    """Copied, flagged or ignored with a reason: nothing under the folder vanishes silently."""
    source, want_ignored = _cluttered_source(tmp_path)
    out_dir = tmp_path / "raw"
    manifest = ingest(str(source), {}, out_dir)

    ignored = read_ignored(out_dir)
    assert ignored == want_ignored
    listed = set(manifest["path"])
    assert not listed & set(ignored)
    assert listed | set(ignored) == entries_under(source)
    assert rows_by_path(manifest)["dog/linked"]["status"] == "unsafe_path"
    assert (manifest["status"] == "ok").sum() == 4
    # hidden and symlinked folders are never entered: nothing of theirs is copied
    assert sorted(p.name for p in (out_dir / "files").rglob("*") if p.is_file()) == [
        "cat_0.png",
        "cat_1.png",
        "dog_2.png",
        "dog_3.png",
    ]
    assert SECRET not in b"".join(all_copied_bytes(out_dir))


def test_symlinks_to_nothing_are_flagged_missing(tmp_path: Path) -> None:
    """A dangling link or a link loop is an input that cannot be read: quarantined, not a crash."""
    source = tmp_path / "src"
    write_png(source / "cat" / "ok.png", 10)
    (source / "cat" / "gone.png").symlink_to(source / "cat" / "deleted.png")
    (source / "cat" / "loop_a.png").symlink_to(source / "cat" / "loop_b.png")
    (source / "cat" / "loop_b.png").symlink_to(source / "cat" / "loop_a.png")

    out_dir = tmp_path / "raw"
    rows = rows_by_path(ingest(str(source), {}, out_dir))

    assert {path: row["status"] for path, row in rows.items()} == {
        "cat/ok.png": "ok",
        "cat/gone.png": "missing",
        "cat/loop_a.png": "missing",
        "cat/loop_b.png": "missing",
    }
    assert "symlink to nothing" in rows["cat/gone.png"]["detail"]
    assert read_ignored(out_dir) == {}


FIFO_INGEST = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tasks.ingest import ingest
    ingest(sys.argv[1], {}, Path(sys.argv[2]))
    """
)


def test_a_fifo_inside_the_root_is_ignored_not_opened(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: finishing proves it was not."""
    source = tmp_path / "src"
    write_png(source / "cat" / "ok.png", 10)
    os.mkfifo(source / "cat" / "pipe.png")
    out_dir = tmp_path / "raw"
    try:
        result = subprocess.run(
            [sys.executable, "-c", FIFO_INGEST, str(source), str(out_dir)],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ingest hung: it opened a FIFO inside the source")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_manifest(out_dir)["path"].tolist() == ["cat/ok.png"]
    assert read_ignored(out_dir) == {"cat/pipe.png": "not_a_file"}
    assert set(IGNORED_REASONS) == {"hidden", "symlinked_folder", "not_a_file"}


def test_missing_folder_source_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(SourceError) as caught:
        ingest(str(missing), {}, tmp_path / "raw")
    assert str(missing) in str(caught.value)


def test_missing_folder_source_says_it_does_not_exist_even_with_groups(tmp_path: Path) -> None:
    """With data.group_column set, a mistyped folder was reported as 'is a folder'."""
    missing = tmp_path / "data" / "mydat"
    for group_column in (None, "patient"):
        with pytest.raises(SourceError) as caught:
            ingest(str(missing), {}, tmp_path / "raw", group_column=group_column)
        message = str(caught.value)
        assert message.startswith(f"data.source: {str(missing)!r} does not exist;"), message
        assert "is a folder" not in message


def test_a_relative_missing_source_shows_where_it_was_looked_for(tmp_path: Path) -> None:
    """The stage, as a user runs it: one line, exit 1, the relative path resolved."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(
        (REPO_ROOT / "params.yaml")
        .read_text()
        .replace("source: sklearn:digits", "source: data/mydat")
        .replace("group_column: null", "group_column: patient")
    )
    result = subprocess.run(
        [sys.executable, "-m", "tasks.ingest"],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    expected = f"data.source: 'data/mydat' does not exist (looked for {work / 'data' / 'mydat'})"
    assert result.stderr.splitlines() == [
        f"error: {expected}; point data.source at an existing folder, a .csv manifest or "
        "sklearn:digits"
    ]


def test_a_file_that_is_not_a_manifest_is_not_called_missing(tmp_path: Path) -> None:
    source = tmp_path / "images.txt"
    source.write_text("cat/a.png\n")
    with pytest.raises(SourceError, match=r"is a file, not a folder; point data.source at"):
        ingest(str(source), {}, tmp_path / "raw")


def test_empty_folder_source_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with pytest.raises(SourceError, match=r"holds no files$"):
        ingest(str(source), {}, tmp_path / "raw")
    (source / ".DS_Store").write_bytes(b"only clutter")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_bytes(b"ref")
    with pytest.raises(SourceError, match=r"holds no files to ingest; 2 ignored \(hidden=2\)$"):
        ingest(str(source), {}, tmp_path / "raw")


# --------------------------------------------------------------------------- local CSV manifest


def _manifest_tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A manifest root with good rows, unsafe rows, a missing row; returns (csv, good contents)."""
    root = tmp_path / "data"
    good = {
        "a.png": write_png(root / "a.png", 10),
        "imgs/b.png": write_png(root / "imgs" / "b.png", 20),
        "imgs/deep/c.png": write_png(root / "imgs" / "deep" / "c.png", 30),
    }
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET)
    (root / "imgs" / "link.png").symlink_to(outside)
    lines = [
        "path,label",
        "a.png,alpha",
        "imgs/b.png, beta ",
        "imgs/deep/c.png,gamma",
        "../outside.png,alpha",
        f"{outside},alpha",
        "imgs/link.png,beta",
        "imgs/nope.png,gamma",
    ]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, good


def test_manifest_rows_are_copied_and_labelled(tmp_path: Path) -> None:
    manifest_path, good = _manifest_tree(tmp_path)
    out_dir = tmp_path / "raw"
    ingest(str(manifest_path), {}, out_dir)
    manifest = read_manifest(out_dir)
    rows = rows_by_path(manifest)

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 7
    for relative, data in good.items():
        assert rows[relative]["status"] == "ok"
        assert rows[relative]["sha256"] == sha256(data)
        assert int(rows[relative]["bytes"]) == len(data)
        assert (out_dir / "files" / relative).read_bytes() == data
    assert rows["a.png"]["label"] == "alpha"
    assert rows["imgs/b.png"]["label"] == "beta"  # surrounding spaces stripped
    assert rows["imgs/deep/c.png"]["label"] == "gamma"
    assert_copies_match(out_dir, manifest)


def test_manifest_unsafe_paths_are_never_opened(tmp_path: Path) -> None:
    manifest_path, _ = _manifest_tree(tmp_path)
    outside = tmp_path / "outside.png"
    out_dir = tmp_path / "raw"
    ingest(str(manifest_path), {}, out_dir)
    rows = rows_by_path(read_manifest(out_dir))

    for unsafe in ("../outside.png", str(outside), "imgs/link.png"):
        assert_unsafe(rows[unsafe])
    assert "absolute" in rows[str(outside)]["detail"]
    assert ".." in rows["../outside.png"]["detail"]
    assert "symlink" in rows["imgs/link.png"]["detail"]

    # Nothing holding the outside file's bytes was written anywhere under out_dir.
    assert SECRET not in b"".join(all_copied_bytes(out_dir))
    assert not (out_dir / "outside.png").exists()
    assert not (out_dir / "files" / "imgs" / "link.png").exists()


def test_manifest_missing_file_is_flagged(tmp_path: Path) -> None:
    manifest_path, _ = _manifest_tree(tmp_path)
    out_dir = tmp_path / "raw"
    ingest(str(manifest_path), {}, out_dir)
    row = rows_by_path(read_manifest(out_dir))["imgs/nope.png"]
    assert row["status"] == "missing"
    assert row["label"] == "gamma"
    assert row["sha256"] == "" and int(row["bytes"]) == -1
    assert not (out_dir / "files" / "imgs" / "nope.png").exists()


@pytest.mark.parametrize("path", ["", "C:/windows/a.png", "s3://bucket/a.png", "a/../../x.png"])
def test_manifest_other_unsafe_spellings(tmp_path: Path, path: str) -> None:
    root = tmp_path / "data"
    write_png(root / "a.png", 10)
    (root / "manifest.csv").write_text(f'path,label\na.png,alpha\n"{path}",alpha\n')
    out_dir = tmp_path / "raw"
    ingest(str(root / "manifest.csv"), {}, out_dir)
    rows = rows_by_path(read_manifest(out_dir))
    assert rows["a.png"]["status"] == "ok"
    assert_unsafe(rows[path])


@pytest.mark.parametrize(("header", "missing"), [("path,kind", "label"), ("file,label", "path")])
def test_manifest_without_a_required_column_names_it(
    tmp_path: Path, header: str, missing: str
) -> None:
    root = tmp_path / "data"
    write_png(root / "a.png", 10)
    (root / "manifest.csv").write_text(f"{header}\na.png,alpha\n")
    with pytest.raises(SourceError) as caught:
        ingest(str(root / "manifest.csv"), {}, tmp_path / "raw")
    assert f"[{missing!r}]" in str(caught.value)


def test_manifest_without_the_group_column_names_the_setting(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "a.png", 10)
    (root / "manifest.csv").write_text("path,label,subject\na.png,alpha,s1\n")
    with pytest.raises(SourceError) as caught:
        ingest(str(root / "manifest.csv"), {}, tmp_path / "raw", group_column="patient")
    message = str(caught.value)
    assert message.startswith("data.group_column='patient': manifest ")
    assert "has no column 'patient' (found ['path', 'label', 'subject'])" in message
    assert "expected path,label" not in message  # path and label are there


def test_missing_manifest_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "data" / "manifest.csv"
    with pytest.raises(SourceError) as caught:
        ingest(str(missing), {}, tmp_path / "raw")
    assert str(missing) in str(caught.value)


# --------------------------------------------------------------------------- S3


@pytest.fixture
def bucket(s3_server: str, s3_env: dict[str, str]) -> Iterator[tuple[object, str]]:
    """A fresh bucket on the local S3 server and a boto3 client for it."""
    client = boto3.client("s3", endpoint_url=s3_server)
    name = f"sixfold-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield client, name


def _upload(client: object, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def test_s3_class_folders(bucket: tuple[object, str], s3_server: str, tmp_path: Path) -> None:
    client, name = bucket
    contents = {
        "cat/c1.png": png_bytes(10),
        "cat/c2.png": png_bytes(20),
        "dog/d1.png": png_bytes(30),
        "dog/sub/d2.png": png_bytes(40),
    }
    _upload(client, name, {f"tree/{k}": v for k, v in contents.items()})
    _upload(client, name, {"elsewhere/x/other.png": png_bytes(50)})

    out_dir = tmp_path / "raw"
    ingest(f"s3://{name}/tree", {"endpoint_url": s3_server}, out_dir)
    manifest = read_manifest(out_dir)
    rows = rows_by_path(manifest)

    assert sorted(rows) == sorted(contents)
    assert {p: r["label"] for p, r in rows.items()} == {
        "cat/c1.png": "cat",
        "cat/c2.png": "cat",
        "dog/d1.png": "dog",
        "dog/sub/d2.png": "dog",
    }
    for relative, data in contents.items():
        assert rows[relative]["status"] == "ok"
        assert rows[relative]["sha256"] == sha256(data)
        assert int(rows[relative]["bytes"]) == len(data)
        assert (out_dir / "files" / relative).read_bytes() == data
    assert_copies_match(out_dir, manifest)


def test_s3_manifest(bucket: tuple[object, str], s3_server: str, tmp_path: Path) -> None:
    client, name = bucket
    contents = {"imgs/a.png": png_bytes(10), "imgs/deep/b.png": png_bytes(20)}
    _upload(client, name, {f"set/{k}": v for k, v in contents.items()})
    _upload(client, name, {"private/secret.png": SECRET})
    lines = [
        "path,label",
        "imgs/a.png,alpha",
        "imgs/deep/b.png,beta",
        "imgs/nope.png,beta",
        "../private/secret.png,alpha",
        f"s3://{name}/private/secret.png,alpha",
        f"/{name}/private/secret.png,alpha",
    ]
    _upload(client, name, {"set/manifest.csv": ("\n".join(lines) + "\n").encode()})

    out_dir = tmp_path / "raw"
    ingest(f"s3://{name}/set/manifest.csv", {"endpoint_url": s3_server}, out_dir)
    manifest = read_manifest(out_dir)
    rows = rows_by_path(manifest)

    assert len(manifest) == 6
    assert rows["imgs/a.png"]["label"] == "alpha"
    assert rows["imgs/deep/b.png"]["label"] == "beta"
    for relative, data in contents.items():
        assert rows[relative]["status"] == "ok"
        assert rows[relative]["sha256"] == sha256(data)
        assert (out_dir / "files" / relative).read_bytes() == data
    assert rows["imgs/nope.png"]["status"] == "missing"
    for unsafe in (
        "../private/secret.png",
        f"s3://{name}/private/secret.png",
        f"/{name}/private/secret.png",
    ):
        assert_unsafe(rows[unsafe])
    assert SECRET not in b"".join(all_copied_bytes(out_dir))
    assert_copies_match(out_dir, manifest)


def test_s3_dotfiles_are_ignored_like_local_ones(
    bucket: tuple[object, str], s3_server: str, tmp_path: Path
) -> None:
    client, name = bucket
    hidden = ["tree/.DS_Store", "tree/cat/.DS_Store", "tree/.git/HEAD", "tree/cat/.thumbs/c1.png"]
    _upload(client, name, {"tree/cat/c1.png": png_bytes(10)} | dict.fromkeys(hidden, b"x"))
    options = {"endpoint_url": s3_server}
    out_dir = tmp_path / "raw"
    manifest = ingest(f"s3://{name}/tree", options, out_dir)
    assert manifest["path"].tolist() == ["cat/c1.png"]
    assert read_ignored(out_dir) == {key.removeprefix("tree/"): "hidden" for key in hidden}
    # the fingerprint lists what ingest lists: a hidden key is counted, not copied
    assert source_fingerprint(f"s3://{name}/tree", options)["entries"] == 1 + len(hidden)


def test_s3_ingest_in_the_same_process_sees_new_objects(
    bucket: tuple[object, str], s3_server: str, tmp_path: Path
) -> None:
    client, name = bucket
    options = {"endpoint_url": s3_server}
    _upload(client, name, {"tree/cat/c1.png": png_bytes(10)})
    source_fingerprint(f"s3://{name}/tree", options)
    _upload(client, name, {"tree/cat/c2.png": png_bytes(20)})
    manifest = ingest(f"s3://{name}/tree", options, tmp_path / "raw")
    assert manifest["path"].tolist() == ["cat/c1.png", "cat/c2.png"]


def test_s3_fingerprint_changes_only_when_the_prefix_changes(
    bucket: tuple[object, str], s3_server: str
) -> None:
    client, name = bucket
    options = {"endpoint_url": s3_server}
    _upload(client, name, {"tree/cat/c1.png": png_bytes(10), "tree/dog/d1.png": png_bytes(20)})
    _upload(client, name, {"other/x.png": png_bytes(30)})
    source = f"s3://{name}/tree"

    first = source_fingerprint(source, options)
    assert first["source"] == source
    assert first["entries"] == 2
    assert source_fingerprint(source, options) == first

    _upload(client, name, {"other/y.png": png_bytes(40)})  # outside the prefix
    assert source_fingerprint(source, options) == first

    _upload(client, name, {"tree/dog/d2.png": png_bytes(50)})
    added = source_fingerprint(source, options)
    assert added["entries"] == 3
    assert added["fingerprint"] != first["fingerprint"]
    assert source_fingerprint(source, options) == added

    _upload(client, name, {"tree/cat/c1.png": png_bytes(60)})  # same key, new content
    edited = source_fingerprint(source, options)
    assert edited["entries"] == 3
    assert edited["fingerprint"] != added["fingerprint"]


def test_s3_fingerprint_of_nothing_is_an_error(bucket: tuple[object, str], s3_server: str) -> None:
    _, name = bucket
    with pytest.raises(SourceError, match="nothing found"):
        source_fingerprint(f"s3://{name}/empty", {"endpoint_url": s3_server})


# --------------------------------------------------------------------------- fingerprint / refresh


def test_refresh_rewrites_only_when_a_local_folder_changes(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_png(source / "cat" / "c1.png", 10)
    write_png(source / "dog" / "d1.png", 20)
    record = tmp_path / "data" / "source.json"

    assert refresh(str(source), {}, record) is True
    text = record.read_text()
    payload = json.loads(text)
    assert payload == source_fingerprint(str(source), {})
    assert payload["source"] == str(source) and payload["entries"] == 2
    assert text == json.dumps(payload, indent=2, sort_keys=True) + "\n"
    assert not list(record.parent.glob("*.tmp"))

    mtime = record.stat().st_mtime_ns
    assert refresh(str(source), {}, record) is False
    assert record.read_text() == text
    assert record.stat().st_mtime_ns == mtime

    write_png(source / "dog" / "d2.png", 30)
    assert refresh(str(source), {}, record) is True
    assert json.loads(record.read_text())["entries"] == 3
    assert record.read_text() != text
    assert refresh(str(source), {}, record) is False


def test_fingerprint_sees_an_edit_and_a_removal(tmp_path: Path) -> None:
    source = tmp_path / "src"
    target = source / "cat" / "c1.png"
    write_png(target, 10)
    write_png(source / "cat" / "c2.png", 20)
    before = source_fingerprint(str(source), {})

    stat = target.stat()
    target.write_bytes(png_bytes(11))  # same size, different bytes
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    edited = source_fingerprint(str(source), {})
    assert edited["fingerprint"] != before["fingerprint"]

    (source / "cat" / "c2.png").unlink()
    removed = source_fingerprint(str(source), {})
    assert removed["entries"] == 1
    assert removed["fingerprint"] not in {before["fingerprint"], edited["fingerprint"]}


def test_fingerprint_lists_what_ingest_lists(tmp_path: Path) -> None:
    """Every entry ingest copies, flags or ignores counts; an ignored file's content does not."""
    source, _ = _cluttered_source(tmp_path)
    ingest(str(source), {}, tmp_path / "raw")
    listed = len(read_manifest(tmp_path / "raw")) + len(read_ignored(tmp_path / "raw"))
    before = source_fingerprint(str(source), {})
    assert before["entries"] == listed == len(entries_under(source))

    (source / "dog" / ".DS_Store").write_bytes(b"new clutter")  # ignored.csv gains a row
    added = source_fingerprint(str(source), {})
    assert added["entries"] == listed + 1
    assert added["fingerprint"] != before["fingerprint"]

    (source / "dog" / ".DS_Store").write_bytes(b"rewritten by Finder, a new size")
    assert source_fingerprint(str(source), {}) == added  # nothing ingest writes changed


def test_fingerprint_of_a_manifest_covers_exactly_its_rows(tmp_path: Path) -> None:
    """Files the manifest does not list (the rest of a repo, other data sets) do not count."""
    manifest_path, _ = _manifest_tree(tmp_path)
    before = source_fingerprint(str(manifest_path), {})
    assert before["fingerprint"] == source_fingerprint(str(manifest_path), {})["fingerprint"]
    write_png(manifest_path.parent / "imgs" / "unlisted.png", 70)
    assert source_fingerprint(str(manifest_path), {})["fingerprint"] == before["fingerprint"]
    time.sleep(0.01)
    write_png(manifest_path.parent / "imgs" / "b.png", 71)  # a listed file changes
    edited = source_fingerprint(str(manifest_path), {})
    assert edited["fingerprint"] != before["fingerprint"]
    with manifest_path.open("a") as handle:  # a row is added
        handle.write("imgs/unlisted.png,beta\n")
    assert source_fingerprint(str(manifest_path), {})["fingerprint"] != edited["fingerprint"]


def test_a_manifest_that_is_not_csv_is_one_clear_error(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.csv"
    manifest.write_bytes(b'path,label\n"a.png,x\nb.png,y,z,w\n')
    with pytest.raises(SourceError, match="not a readable CSV"):
        ingest(str(manifest), {}, out_dir=tmp_path / "raw")


def test_fingerprint_of_digits_is_stable() -> None:
    first = source_fingerprint("sklearn:digits", {})
    assert first == source_fingerprint("sklearn:digits", {})
    assert first["entries"] == 1 and first["source"] == "sklearn:digits"
    assert len(first["fingerprint"]) == 64


def test_fingerprint_of_a_missing_source_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError) as caught:
        source_fingerprint(str(missing), {})
    assert str(missing) in str(caught.value)
    with pytest.raises(SourceError):
        refresh(str(missing), {}, tmp_path / "source.json")
    assert not (tmp_path / "source.json").exists()
