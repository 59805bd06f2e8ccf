"""The DVC remote on S3 for real: a copy of the shared trained repository (one real run),
`make push` to a bucket on moto's S3 server (tests/conftest.py), then a fresh `git clone` that
`make pull`s and is up to date without rerunning any stage, and the original's wiped cache and
outputs pulled back. And continual learning's batches (`data/batches/<version>.dvc`), which DVC
alone does not collect (flows/remote.py, `dvc_files`): pushed, pulled byte for byte, and checked
by the status after pull.

`python -m flows.remote push|pull` is what `make push` / `make pull` run. The endpoint and the
credentials are in the environment only (`s3_env`, AWS_ENDPOINT_URL), as for a real bucket.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import boto3
import pytest

from tasks.continual.batch import OldSplits, build_batch, dvc_add, ingest_batch, version_of
from tasks.core.config import load_params
from tasks.core.layout import SPLITS, Layout
from tasks.data.packed import load_split
from tasks.modeling.artifact import CARD_FILE, ModelCard
from tests.conftest import VENV_BIN, run
from tests.system.test_continual import inverted_batch

pytestmark = pytest.mark.slow

# Outputs each check looks at: a persist: true output, the package stage's BentoML stores, a
# model and data (all cached, so they come from the remote), and a cache: false metric (git).
RESTORED = (
    "models/registry/registry.json",
    "models/bentoml/models/sixfold-classifier/latest",
    "models/bentoml/bentos/sixfold-classifier/latest",
    "models/model.safetensors",
    "data/packed",
    "reports/metrics.json",
)


def _commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def _remote(action: str, repo: Path, endpoint: str, check: bool = True) -> str:
    """`make push` / `make pull` (what they run), the endpoint from the environment."""
    result = run(
        ["python", "-m", "flows.remote", action],
        repo,
        check=check,
        env={"AWS_ENDPOINT_URL": endpoint},
    )
    return result.stdout + result.stderr


def _use_bucket(repo: Path, s3_server: str, bucket: str) -> None:
    """A new bucket on the server, made the repo's default remote (committed: no secret in it)."""
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    run(["dvc", "remote", "add", "-f", "-d", "storage", f"s3://{bucket}/sixfold"], repo)
    _commit(repo, f"remote: {bucket}")


def _assert_up_to_date(repo: Path) -> None:
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    repro = run(["dvc", "repro"], repo)
    assert "Running stage" not in repro.stdout + repro.stderr, repro.stdout[-3000:]
    assert "Data and pipelines are up to date" in repro.stdout


@pytest.fixture(scope="module")
def built(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared trained repository (one real run of the whole pipeline: a champion,
    packaged), its dvc.lock and reports committed."""
    repo = tmp_path_factory.mktemp("remote") / "repo"
    shutil.copytree(trained_repo, repo, symlinks=True)
    assert (repo / RESTORED[1]).exists(), "the trained repository packaged no champion"
    _commit(repo, "dvc.lock and reports")
    return repo


def test_fresh_clone_pulls_everything_and_reruns_nothing(
    built: Path, s3_server: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    _use_bucket(built, s3_server, "sixfold-clone")
    pushed = _remote("push", built, s3_server)
    assert f"'storage' (s3://sixfold-clone/sixfold at {s3_server} from AWS_ENDPOINT_URL)" in pushed
    assert "files pushed" in pushed
    assert "not committed" not in pushed

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
    assert not (clone / "models" / "model.safetensors").exists()
    pulled = _remote("pull", clone, s3_server)
    assert "make pull: the workspace matches dvc.lock and the .dvc files; no stage needs" in pulled
    for name in RESTORED:
        assert (clone / name).exists(), name
    registry = "models/registry/registry.json"
    assert (clone / registry).read_bytes() == (built / registry).read_bytes()
    assert run(["git", "status", "--porcelain"], clone).stdout == ""  # DVC's .gitignore cover them
    _assert_up_to_date(clone)


def test_wiped_cache_and_outputs_come_back_from_the_remote(
    built: Path, s3_server: str, s3_env: dict[str, str]
) -> None:
    _use_bucket(built, s3_server, "sixfold-wipe")
    _remote("push", built, s3_server)
    shutil.rmtree(built / ".dvc" / "cache")
    run(["make", "clean", f"VENV={VENV_BIN.parent}"], built)
    shutil.rmtree(built / "models" / "registry")  # make clean keeps it: the remote has it too
    assert not (built / "models" / "bentoml").exists()
    endpoint = {"AWS_ENDPOINT_URL": s3_server}

    # metrics and plots (cache: false) were deleted too: they are git's, not the remote's
    stale = run(["python", "-m", "flows.remote", "pull"], built, check=False, env=endpoint)
    assert stale.returncode == 1
    assert "make pull: stages not up to date with dvc.lock: " in stale.stderr
    assert "come from git" in stale.stderr
    run(["git", "checkout", "--", "reports"], built)
    for name in RESTORED:
        assert (built / name).exists(), name
    assert "in sync" in run(["dvc", "status", "--cloud"], built, env=endpoint).stdout
    _assert_up_to_date(built)


def test_pull_with_no_credentials_names_the_variables(
    built: Path,
    s3_server: str,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _use_bucket(built, s3_server, "sixfold-nocreds")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    output = _remote("pull", built, s3_server, check=False)
    assert "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in output


def add_batch(repo: Path, source: Path) -> str:
    """`source` made a data version as continual learning makes one (`tasks.continual.run.learn`
    up to its `dvc add`), without the fine-tuning that follows: the library functions, the
    pipeline's own model card and splits standing in for the champion's. Returns the version."""
    layout = Layout(repo)
    params = load_params(layout.params_file)
    card = ModelCard.load(layout.models_dir / CARD_FILE)
    old = OldSplits(*(load_split(name, layout.packed_dir) for name in SPLITS))
    staging, manifest = ingest_batch(str(source), params, layout)
    version = version_of(manifest, params, card)
    batch = build_batch(str(source), staging, manifest, version, params, card, old, layout)
    dvc_add(layout.root, batch.folder)
    return version


def sha256_of_files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_continual_batches_travel_with_push_and_pull(
    trained_repo: Path, s3_server: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))
    versions = [
        add_batch(repo, inverted_batch(repo, tmp_path / f"inverted-{take}", take=take))
        for take in ("head", "tail")
    ]
    assert len(set(versions)) == 2
    batch_files = [f"data/batches/{version}.dvc" for version in versions]
    _commit(repo, "dvc.lock, reports and two continual-learning batches")
    assert set(run(["git", "ls-files", "data/batches"], repo).stdout.split()) == set(batch_files)
    _use_bucket(repo, s3_server, "sixfold-batches")
    endpoint = {"AWS_ENDPOINT_URL": s3_server}

    pushed = _remote("push", repo, s3_server)
    assert "and 2 .dvc-tracked batches (data/batches/*.dvc) to 'storage'" in pushed
    assert "files pushed" in pushed
    assert "not committed" not in pushed
    for name in batch_files:  # the user's symptom: every file of the batch listed as new
        assert "in sync" in run(["dvc", "status", "--cloud", name], repo, env=endpoint).stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "data" / "batches" / versions[0]).exists()
    pulled = _remote("pull", clone, s3_server)
    assert "and 2 .dvc-tracked batches (data/batches/*.dvc) from 'storage'" in pulled
    assert "the workspace matches dvc.lock and the .dvc files; no stage needs to rerun" in pulled
    for version in versions:
        original = sha256_of_files(repo / "data" / "batches" / version)
        assert {"batch.json", "packed/train_x.npy", "packed/test_y.npy"} <= set(original)
        assert sha256_of_files(clone / "data" / "batches" / version) == original, version
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status", *batch_files], clone).stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
