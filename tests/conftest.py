"""Shared fixtures: a temporary copy of the repository with a shrunk config, a real S3 API server,
a real Prefect server.

Tests build the real configuration and shrink it (few epochs, CPU) rather than mocking stages.
`tests/code/` holds the tests of code (fast), `tests/system/` the end-to-end ones (marked
`slow`); tests marked `gpu` are skipped here on a machine without a CUDA GPU.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# The settings every end-to-end test starts from: the real params.yaml, shrunk for speed.
SHRUNK = {
    "train": {"max_epochs": 3, "accelerator": "cpu"},
    "model": {"width": 8},
    "augment": {"copies": 1},
    # the shipped space, with widths a test can afford; a budget that never stops a slow machine
    "tune": {
        "num_samples": 2,
        "max_epochs": 2,
        "grace_period": 1,
        "time_budget_minutes": 5,
        "space": {"model": {"width": {"type": "choice", "values": [8, 12]}}},
    },
    "explain": {"per_class": 1, "lime_samples": 50, "ig_steps": 16, "sanity_samples": 16},
    "compress": {"latency_repeats": 3, "calibration_images": 32},
}


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist (`make test` runs the suite on every core): each worker gets its own Prefect
    home, so the temporary servers of flows run by two workers at once never share a database,
    and its share of the cores for torch's threads, so two trainings at once do not fight."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    home = tempfile.mkdtemp(prefix=f"sixfold-prefect-{worker}-")
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    os.environ["PREFECT_HOME"] = home


DURATIONS = REPO_ROOT / "reports" / "test-durations.txt"  # `make test-profile` writes it


def _module_costs() -> dict[str, float]:
    """Seconds per test module in the last `make test-profile` (empty before the first)."""
    costs: dict[str, float] = {}
    if DURATIONS.exists():
        for line in DURATIONS.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].endswith("s") and parts[1] in {"setup", "call"}:
                module = parts[2].split("::")[0]
                costs[module] = costs.get(module, 0.0) + float(parts[0].rstrip("s"))
    return costs


def _schedule(items: list[pytest.Item]) -> None:
    """Order the test modules: first the one that needs the shared trained repository (its
    worker builds it meanwhile), the slow modules that do not need it, those that do, then the
    fast ones; the costliest first within each (from `make test-profile`). Under `--dist
    loadscope` (a module's tests on one worker, so its fixtures are built once) xdist then hands
    out the modules with the most tests first, ties in this order; `--no-loadscope-reorder`
    would follow this order alone, but measured slower here (see README, Tests)."""
    costs = _module_costs()
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    needs_trained = {
        m for m, tests in modules.items() if any("trained_repo" in t.fixturenames for t in tests)
    }
    builder = next((m for m in modules if m in needs_trained), None)

    def tier(module: str) -> int:
        slow = any(t.get_closest_marker("slow") for t in modules[module])
        if module == builder:
            return 0
        if slow:
            return 2 if module in needs_trained else 1
        return 3

    order = sorted(modules, key=lambda m: (tier(m), -costs.get(m, 0.0)))
    items[:] = [item for module in order for item in modules[module]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order and group the tests for xdist; skip the `gpu` tests where there is no CUDA GPU (the
    one place that decides it)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is not None:
        _schedule(items)
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return  # torch is not imported for runs that need no answer
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it is released when the probe closes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_params(repo: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply `overrides` to the repo copy's params.yaml; returns the resulting params."""
    params_file = repo / "params.yaml"
    params = merge(yaml.safe_load(params_file.read_text()), overrides)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run(
    command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with the project's virtualenv first on PATH; fail loudly with its output."""
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}"
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def copy_of_repository(destination: Path, overrides: dict[str, Any]) -> Path:
    """A fresh copy of the repository's committed (and untracked, not ignored) files at
    `destination`, with `overrides` applied to params.yaml, committed in a new git repository.
    The committed pipeline results under reports/ are left out, as dvc.lock is."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if name.startswith("reports/") and name != "reports/.gitkeep":
            continue  # the committed results of the last run: a test sees only its own run's
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (destination / "dvc.lock").unlink(missing_ok=True)  # start as a fresh clone would
    write_params(destination, overrides)
    run(["git", "init", "-q"], destination)
    run(["git", "add", "-A"], destination)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], destination)
    return destination


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh copy of the repository (git + DVC initialised) with the shrunk config."""
    return copy_of_repository(tmp_path / "repo", SHRUNK)


# Enough training for a model worth checking (about a minute on 2 CPU cores); no search (the tune
# stage records the params.yaml values).
TRAINED = {"train": {"max_epochs": 15, "accelerator": "cpu"}, "tune": {"enabled": False}}


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder that `build` fills once per test run, however many xdist workers ask for it.

    Under xdist every worker has its own session fixtures; the first worker to ask builds the
    folder in the run's shared temporary root (under a file lock) and the others wait for it,
    then read it. Readers must treat it as read-only: tests copy it before they change it."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    folder, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed to build it
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


# A loaded machine can take longer than Prefect's 20 s to start a flow's temporary server.
PREFECT_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def _train(folder: Path) -> None:
    """The whole pipeline run by the Prefect flow (`python -m flows.pipeline`, its temporary
    server), as a user runs it; its output is kept in `flow.log` beside the repository, where
    tests/system/test_pipeline.py checks that the flow ran every stage in DAG order."""
    destination = copy_of_repository(folder / "repo", TRAINED)
    result = run(["python", "-m", "flows.pipeline"], destination, env=PREFECT_ENV)
    (folder / "flow.log").write_text(result.stdout + result.stderr)


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run of the whole pipeline on the digits by the Prefect flow, shared by the data,
    model and system tests (and by every xdist worker): the real params.yaml with fewer epochs
    and no search. Read-only: a test that changes a repository copies this one first."""
    return built_once(tmp_path_factory, "trained", _train) / "repo"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's standalone S3 API server on 127.0.0.1 (as dvc-s3's own tests use); yields its URL.

    Credentials exist only in the environment, as they would for a real bucket.
    """
    port = free_port()
    process = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1 with its own database (a fresh PREFECT_HOME); yields
    its API URL (what PREFECT_API_URL names). Its scheduler and other services run as usual."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    environment = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    log = open(home / "server.log", "w")  # noqa: SIM115 (open for the server's whole life)
    process = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_for_port(port, process, timeout=180)
        _wait_for_health(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _wait_for_health(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/health did not answer within {timeout}s")


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AWS credentials for the local S3 server, set in the environment only."""
    environment = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return environment


# --------------------------------------------------------------------------- data stages, once
# per test module: tests/code/test_split_augment.py and tests/system/test_split_augment_pipeline.py
# read the same run (helpers in tests/stages.py, imported here lazily: it imports this module)


@pytest.fixture(scope="module")
def digits_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-folder source of the first PER_CLASS bundled digits of each class."""
    from tasks.data.sources import write_digits
    from tests.stages import PER_CLASS

    folder = tmp_path_factory.mktemp("digits-subset")
    write_digits(folder)
    for class_folder in folder.iterdir():
        for extra in sorted(class_folder.iterdir())[PER_CLASS:]:
            extra.unlink()
    return folder


@pytest.fixture(scope="module")
def first_run(digits_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingest -> validate -> split -> augment with seed 42 and train.cv_folds=3."""
    from tests.stages import digits_overrides, run_stages

    work = tmp_path_factory.mktemp("run-seed42")
    run_stages(work, digits_overrides(digits_source), hash_seed=1)
    return work
