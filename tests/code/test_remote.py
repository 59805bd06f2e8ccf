"""flows/remote.py without a server: which remote `make push` / `make pull` use, the one-line
errors when there is none or when the committed .dvc/config holds a credential, where the
endpoint comes from, the hint for DVC's S3 errors, and which dvc.yaml and .dvc files (continual
learning's batches among them) every push, pull and status check names. The real push and pull
against an S3 server are in tests/system/test_remote.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.remote import dvc_files, hint_for, main, resolve_remote, stale_stages, what_travels
from tasks.core.errors import UserError
from tasks.core.runner import EX_TEMPFAIL, EX_USER
from tests.conftest import REPO_ROOT, run

REMOTE = "['remote \"storage\"']\n    url = s3://bucket/prefix\n"


@pytest.fixture
def dvc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty .dvc folder, out of reach of any user or system DVC config."""
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(tmp_path / "system"))
    folder = tmp_path / "repo" / ".dvc"
    folder.mkdir(parents=True)
    (folder / "config").write_text("[core]\n    analytics = false\n")
    return folder


def _config(dvc_dir: Path, text: str, local: str = "") -> None:
    (dvc_dir / "config").write_text(text)
    (dvc_dir / "config.local").write_text(local)


def test_no_remote_says_how_to_add_one(dvc_dir: Path) -> None:
    with pytest.raises(
        UserError, match=r"no DVC remote is configured; add one: `dvc remote add -d"
    ):
        resolve_remote(dvc_dir)


def test_remotes_without_a_default_say_how_to_choose(dvc_dir: Path) -> None:
    _config(dvc_dir, REMOTE)
    with pytest.raises(UserError, match=r"`dvc remote default storage`.*REMOTE=storage"):
        resolve_remote(dvc_dir)
    assert resolve_remote(dvc_dir, "storage").url == "s3://bucket/prefix"
    with pytest.raises(UserError, match=r"no DVC remote named 'other' \(configured: storage\)"):
        resolve_remote(dvc_dir, "other")


def test_endpoint_from_the_environment_or_the_config(
    dvc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(dvc_dir, "[core]\n    remote = storage\n" + REMOTE)
    assert resolve_remote(dvc_dir).describe() == "'storage' (s3://bucket/prefix)"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert resolve_remote(dvc_dir).describe() == (
        "'storage' (s3://bucket/prefix at http://127.0.0.1:9000 from AWS_ENDPOINT_URL)"
    )
    local = REMOTE + "    endpointurl = http://minio:9000\n"
    _config(dvc_dir, "[core]\n    remote = storage\n" + REMOTE, local)
    assert "http://minio:9000 from the DVC config" in resolve_remote(dvc_dir).describe()


def test_a_committed_credential_is_refused_a_local_one_is_not(dvc_dir: Path) -> None:
    credentials = "    access_key_id = AKIA0\n    secret_access_key = abc\n"
    _config(dvc_dir, "[core]\n    remote = storage\n" + REMOTE + credentials)
    with pytest.raises(UserError) as refused:
        resolve_remote(dvc_dir)
    message = str(refused.value)
    assert "remote.storage.access_key_id, remote.storage.secret_access_key" in message
    assert "dvc remote modify --local" in message

    _config(dvc_dir, "[core]\n    remote = storage\n" + REMOTE, REMOTE + credentials)
    assert resolve_remote(dvc_dir).name == "storage"  # .dvc/config.local is git-ignored
    path = "    credentialpath = /home/me/.aws/credentials\n"
    _config(dvc_dir, "[core]\n    remote = storage\n" + REMOTE + path)
    assert resolve_remote(dvc_dir).name == "storage"  # a file's path is not a secret


def test_hints_for_dvc_s3_errors() -> None:
    assert hint_for(["ERROR: unexpected error - Unable to locate credentials"]) == (
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
        EX_USER,
    )
    unreachable = 'ERROR: unexpected error - Could not connect to the endpoint URL: "http://x/b"'
    assert hint_for([unreachable])[1] == EX_TEMPFAIL
    missing = "ERROR: unexpected error - The specified bucket does not exist: ... (NoSuchBucket)"
    assert "bucket does not exist" in hint_for([missing])[0]
    assert hint_for(["ERROR: something else"]) is None


def test_main_exits_1_with_one_line(
    dvc_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(dvc_dir.parent)
    with pytest.raises(SystemExit) as exit_info:
        main(["push"])
    assert exit_info.value.code == EX_USER
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("make push: no DVC remote is configured")
    with pytest.raises(SystemExit) as exit_info:
        main(["sync"])
    assert exit_info.value.code == EX_USER
    assert "usage: python -m flows.remote" in capsys.readouterr().err


def _git_repository(root: Path) -> Path:
    """A git repository at `root` with the project's own .gitignore (whose `/data/*` line is what
    DVC's collection of .dvc files trips on)."""
    root.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q"], root)
    shutil.copy2(REPO_ROOT / ".gitignore", root / ".gitignore")
    return root


def _commit(root: Path) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "files"], root)


def test_dvc_files_are_what_git_sees_batches_included(tmp_path: Path) -> None:
    root = _git_repository(tmp_path / "repo")
    for name in (
        "dvc.yaml",
        "data/batches/old.dvc",  # committed
        "data/batches/gone.dvc",  # committed, then deleted: nothing to push
        "data/batches/old/raw/files/3/a.png",  # the batch itself: DVC's, git-ignored
        "data/raw/files/odd.dvc",  # a pipeline output's file: git-ignored
        "models/registry/x.dvc",  # likewise
        "nested/dvc.yaml",
        "notes/dvc.yaml.bak",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    _commit(root)
    (root / "data/batches/gone.dvc").unlink()
    (root / "data/batches/new.dvc").write_text("x\n")  # not committed yet: pushed all the same
    (root / "extra.dvc").write_text("x\n")

    assert dvc_files(root) == [
        "data/batches/new.dvc",
        "data/batches/old.dvc",
        "dvc.yaml",
        "extra.dvc",
        "nested/dvc.yaml",
    ]
    elsewhere = tmp_path / "not-git"
    elsewhere.mkdir()
    assert dvc_files(elsewhere) == []  # no git: DVC's own collection is right there


def test_what_travels_counts_the_batches() -> None:
    assert what_travels(["dvc.yaml"]) == (
        "the outputs dvc.lock records and 0 .dvc-tracked batches (data/batches/*.dvc)"
    )
    one = what_travels(["data/batches/a1.dvc", "dvc.yaml"])
    assert one.endswith("and 1 .dvc-tracked batch (data/batches/*.dvc)")
    mixed = what_travels(["data/batches/a1.dvc", "data/batches/b2.dvc", "extra.dvc", "dvc.yaml"])
    assert mixed.endswith("2 .dvc-tracked batches (data/batches/*.dvc) and 1 other .dvc file")


def test_status_on_the_targets_sees_a_batch_dvc_alone_misses(tmp_path: Path) -> None:
    """A real `dvc add`ed batch under the project's .gitignore, where DVC's own collection walks
    past data/ (`flows.remote.dvc_files` says why): with `dvc_files` as targets, `dvc status`
    names the batch whose file is missing, as the check after `make pull` needs."""
    root = _git_repository(tmp_path / "repo")
    run(["dvc", "init", "-q"], root)
    batch = root / "data" / "batches" / "v1"
    (batch / "packed").mkdir(parents=True)
    (batch / "batch.json").write_text("{}\n")
    (batch / "packed" / "train_x.npy").write_bytes(b"\x93NUMPY")
    run(["dvc", "add", "-q", "data/batches/v1"], root)
    _commit(root)
    targets = dvc_files(root)
    assert targets == ["data/batches/v1.dvc"]
    assert stale_stages(root, targets) == []

    (batch / "batch.json").unlink()
    assert stale_stages(root, targets) == ["data/batches/v1.dvc"]
