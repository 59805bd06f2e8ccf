"""End to end: searches on Ray (crash retry, CV trials, resume after Ctrl-C, an existing cluster).

Stages run as `python -m tasks.<stage>` in a temporary repository copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.tuning.runtime import FAIL_ONCE_ENV
from tests.conftest import VENV_BIN, free_port, run, write_params

# a search small enough for the 2-core machine: 3 trials x 2 epochs on un-augmented data
SMALL_SEARCH = {
    "tune": {"num_samples": 3, "max_epochs": 2, "grace_period": 1, "max_concurrent": 2},
    "augment": {"copies": 0},
}


def _prepare(repo: Path) -> None:
    for stage in ("ingest", "validate", "split", "augment"):
        run(["python", "-m", f"tasks.{stage}"], repo)


def _summary(repo: Path) -> dict:
    return json.loads((repo / "reports" / "tune" / "summary.json").read_text())


@pytest.mark.slow
def test_a_trial_that_crashes_once_is_retried_and_the_search_completes(
    repo: Path, tmp_path: Path
) -> None:
    write_params(repo, SMALL_SEARCH)
    _prepare(repo)
    marker = tmp_path / "crashed-once"
    result = run(["python", "-m", "tasks.tune"], repo, env={FAIL_ONCE_ENV: str(marker)})
    assert marker.exists(), "the injected failure never fired"
    crashed_trial = marker.read_text()
    trials = pd.read_csv(repo / "reports" / "tune" / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 3 and (trials["status"] == "finished").all(), result.stdout[-3000:]
    retried = trials[trials["retries"] > 0]
    assert list(retried["trial_id"]) == [crashed_trial]
    summary = _summary(repo)
    assert summary["retried_trials"] == 1 and summary["errored_trials"] == 0
    best = yaml.safe_load((repo / "models" / "tune" / "best_params.yaml").read_text())
    assert set(best) == {"train.lr", "train.weight_decay", "model.dropout"}
    # train picks the tuned values up
    train = run(["python", "-m", "tasks.train"], repo)
    assert "train: using the tuned values from models/tune/best_params.yaml" in train.stdout


@pytest.mark.slow
def test_with_cv_folds_a_trial_scores_its_mean_over_the_folds(repo: Path) -> None:
    """Trials run in their own folders (maybe on other nodes): nothing is read from the cwd."""
    write_params(
        repo,
        {
            **SMALL_SEARCH,
            "train": {"cv_folds": 2},
            "tune": {**SMALL_SEARCH["tune"], "num_samples": 2},
        },
    )
    _prepare(repo)
    result = run(["python", "-m", "tasks.tune"], repo)
    trials = pd.read_csv(repo / "reports" / "tune" / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "finished").all(), result.stdout[-3000:]
    assert (trials["epochs_run"] == 1).all(), "a CV trial reports once: its mean over the folds"
    assert 0.0 < _summary(repo)["best_val_acc"] <= 1.0


@pytest.mark.slow
def test_an_interrupted_search_resumes(repo: Path, tmp_path: Path) -> None:
    write_params(
        repo,
        {
            **SMALL_SEARCH,
            "tune": {
                "num_samples": 4,
                "max_epochs": 3,
                "max_concurrent": 1,
                "scheduler": "none",
                "search": "random",
            },
        },
    )
    _prepare(repo)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(
            ["python", "-m", "tasks.tune"], cwd=repo, env=env, stdout=log, stderr=log
        )
        experiment = repo / "models" / "tune" / "search" / "sixfold-tune"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            done = [
                path
                for path in experiment.glob("run_trial_*/result.json")
                if len(path.read_text().splitlines()) >= 3
            ]
            if len(done) >= 2:
                break
            time.sleep(0.5)
        assert first.poll() is None, log_path.read_text()[-3000:]
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    # SearchInterrupted is a UserError: exit 1 with one line saying how to go on
    log = log_path.read_text()
    assert first.returncode == 1, log[-3000:]
    assert "error: tune: search interrupted (" in log and "run again to resume it" in log
    assert "Traceback" not in log, log[-3000:]
    assert not (repo / "reports" / "tune" / "summary.json").exists()

    second = run(["python", "-m", "tasks.tune"], repo)
    assert "tune: resuming the interrupted search" in second.stdout
    summary = _summary(repo)
    assert summary["resumed"] is True and summary["trials"] == 4
    trials = pd.read_csv(repo / "reports" / "tune" / "trials.csv")
    assert (trials["status"] == "finished").all() and (trials["epochs_run"] == 3).all()


@pytest.mark.slow
def test_trials_run_on_an_existing_ray_cluster(repo: Path) -> None:
    port = free_port()
    ray = str(VENV_BIN / "ray")
    # everything on 127.0.0.1: Ray would otherwise advertise the machine's outward address
    # and `ray start` turns on token authentication (Ray 2.60): clients must use the token mode
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
    }
    run(
        [
            ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
        ],
        repo,
        env=env,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        write_params(repo, {**SMALL_SEARCH, "tune": {**SMALL_SEARCH["tune"], "address": address}})
        _prepare(repo)
        result = run(["python", "-m", "tasks.tune"], repo, env=env)
        assert _summary(repo)["trials"] == 3
        # the cluster, not a private Ray, ran the search: its job table has our driver
        probe = run(
            [
                "python",
                "-c",
                "import ray; ray.init(address='" + address + "', log_to_driver=False); "
                "from ray._private.state import jobs; "
                "print('JOBS', len([j for j in jobs() if j.get('IsDead')]))",
            ],
            repo,
            env=env,
        )
        finished_jobs = int(probe.stdout.split("JOBS")[1].split()[0])
        assert finished_jobs >= 1, result.stdout[-2000:]
    finally:
        run([ray, "stop", "--force"], repo, check=False)
