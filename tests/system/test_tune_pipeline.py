"""End to end: searches on Ray (a crashed trial retried, trials that fail for good, CV trials,
resume after Ctrl-C, an existing cluster).

Stages run as `python -m tasks.<stage>` in a temporary repository copy. Faults are the tests' own:
a trial's Ray worker process killed with SIGKILL in the middle of its training, or packed data
that training cannot use; the product has no switch for them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from tasks.tuning.attempts import attempts_made
from tests.conftest import (
    SHRUNK,
    VENV_BIN,
    _wait_for_port,
    built_once,
    copy_of_repository,
    free_port,
    merge,
    run,
    write_params,
)

# a search small enough for the 2-core machine: 3 trials x 2 epochs on un-augmented data
SMALL_SEARCH = {
    "tune": {"num_samples": 3, "max_epochs": 2, "grace_period": 1, "max_concurrent": 2},
    "augment": {"copies": 0},
}
EXPERIMENT = Path("models", "tune", "search", "sixfold-tune")


def _prepare(
    repo: Path, stages: tuple[str, ...] = ("ingest", "validate", "split", "augment")
) -> None:
    for stage in stages:
        run(["python", "-m", f"tasks.{stage}"], repo)


def _prepared(folder: Path) -> None:
    _prepare(copy_of_repository(folder / "repo", merge(SHRUNK, SMALL_SEARCH)))


@pytest.fixture
def repo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A repository copy with the data stages done (ingest -> augment, no augmented copies), made
    once per test run and copied for each test: the searches below start from it."""
    prepared = built_once(tmp_path_factory, "tune-prepared", _prepared) / "repo"
    return Path(shutil.copytree(prepared, tmp_path / "repo", symlinks=True))


def _summary(repo: Path) -> dict:
    return json.loads((repo / "reports" / "tune" / "summary.json").read_text())


def _trials(repo: Path) -> pd.DataFrame:
    return pd.read_csv(repo / "reports" / "tune" / "trials.csv", dtype={"trial_id": str})


def _start_tune(repo: Path, logs: Path) -> subprocess.Popen:
    """`python -m tasks.tune` in the background, its stdout and stderr in `logs`/out, /err."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    logs.mkdir(exist_ok=True)
    with open(logs / "out", "w") as out, open(logs / "err", "w") as err:
        return subprocess.Popen(
            ["python", "-m", "tasks.tune"], cwd=repo, env=env, stdout=out, stderr=err
        )


def _wait(stage: subprocess.Popen, logs: Path) -> tuple[int, str, str]:
    """The stage's exit code, stdout and stderr once it ends."""
    stage.wait(timeout=600)
    return stage.returncode, (logs / "out").read_text(), (logs / "err").read_text()


def _epochs_reported(trial_dir: Path) -> int:
    """The epochs a trial has reported so far: the complete lines of its result.json."""
    results = trial_dir / "result.json"
    return results.read_text().count("\n") if results.exists() else 0


def _rows(trial_dir: Path) -> list[dict]:
    """What a trial reported, one row per epoch (its result.json)."""
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def _trial_workers(stage: subprocess.Popen) -> dict[str, psutil.Process]:
    """The stage's Ray worker processes that are running a trial, by the trial's folder name.

    Ray titles a process running a trial `ray::ImplicitFunc.train` and runs it in a working folder
    named as the trial's folder under models/tune/search. Only the stage's own descendants count:
    other Ray clusters on the machine are none of this test's business.
    """
    workers = {}
    for process in psutil.Process(stage.pid).children(recursive=True):
        try:
            if process.cmdline()[0].startswith("ray::ImplicitFunc"):
                workers[Path(process.cwd()).name] = process
        except (psutil.Error, IndexError):
            continue  # ended, or not yet a trial
    return workers


def _kill_mid_trial(
    stage: subprocess.Popen,
    experiment: Path,
    max_epochs: int,
    after_epochs: int = 1,
    trial: str | None = None,
    timeout: float = 300,
) -> tuple[str, int]:
    """SIGKILL the worker process of a trial (`trial`, or the first one found) once the trial has
    reported `after_epochs` epochs and while it has more to train. Returns the trial's folder
    name and the epochs it had reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stage.poll() is None, "the search ended before a trial could be killed"
        for name, process in _trial_workers(stage).items():
            reported = _epochs_reported(experiment / name)
            if (trial is None or name == trial) and after_epochs <= reported < max_epochs:
                process.kill()
                return name, reported
        time.sleep(0.05)
    raise AssertionError(f"no trial reached {after_epochs} epoch(s) in {timeout}s")


@pytest.mark.slow
def test_a_trial_killed_mid_training_is_retried_from_its_checkpoint(
    repo: Path, tmp_path: Path
) -> None:
    # no early stopping: the killed trial must have epochs left to train after its retry
    write_params(
        repo,
        {**SMALL_SEARCH, "tune": {**SMALL_SEARCH["tune"], "max_epochs": 4, "scheduler": "none"}},
    )
    experiment = repo / EXPERIMENT
    stage = _start_tune(repo, tmp_path / "logs")
    killed, _ = _kill_mid_trial(stage, experiment, max_epochs=4)
    returncode, out, err = _wait(stage, tmp_path / "logs")
    assert returncode == 0, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    trials = _trials(repo)
    assert len(trials) == 3 and (trials["status"] == "finished").all(), out[-3000:]
    killed_rows = _rows(experiment / killed)
    killed_id = killed_rows[0]["trial_id"]
    assert list(trials.loc[trials["retries"] > 0, "trial_id"]) == [killed_id]
    # the retry went on from the last epoch it had reported, it did not start over
    assert sorted(row["epoch"] for row in killed_rows) == [0, 1, 2, 3]
    assert {row["attempt"] for row in killed_rows} == {1, 2}
    summary = _summary(repo)
    assert summary["retried_trials"] == 1 and summary["errored_trials"] == 0
    assert out.strip().splitlines()[-1].startswith("tune: 3 trials, ")
    best = yaml.safe_load((repo / "models" / "tune" / "best_params.yaml").read_text())
    assert set(best) == {
        "train.lr",
        "augment.hflip",
        "augment.rotation",
        "augment.scale",
        "model.width",
    }
    # train picks the tuned values up
    train = run(["python", "-m", "tasks.train"], repo)
    assert "train: using the tuned values from models/tune/best_params.yaml" in train.stdout


@pytest.mark.slow
def test_a_trial_that_fails_after_its_retries_is_named_in_the_last_line(
    repo: Path, tmp_path: Path
) -> None:
    write_params(
        repo,
        {
            **SMALL_SEARCH,
            "tune": {
                **SMALL_SEARCH["tune"],
                "max_epochs": 5,
                "scheduler": "none",
                "max_failures": 1,
            },
        },
    )
    experiment = repo / EXPERIMENT
    stage = _start_tune(repo, tmp_path / "logs")
    failing, reported = _kill_mid_trial(stage, experiment, max_epochs=5)
    # and once more when its one retry has trained an epoch
    _kill_mid_trial(stage, experiment, max_epochs=5, after_epochs=reported + 1, trial=failing)
    returncode, out, err = _wait(stage, tmp_path / "logs")
    assert returncode == 0, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith(
        "tune: 3 trials (1 failed after 1 retry: see reports/tune/trials.csv), "
    ), last_line
    trials = _trials(repo).set_index("trial_id")
    failing_id = _rows(experiment / failing)[0]["trial_id"]
    assert trials.loc[failing_id, "status"] == "error" and trials.loc[failing_id, "retries"] == 1
    others = trials.drop(index=failing_id)
    assert len(others) == 2 and (others["status"] == "finished").all(), out[-3000:]
    assert (others["epochs_run"] == 5).all()
    assert _summary(repo)["errored_trials"] == 1


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_stops_with_one_error_line(repo: Path) -> None:
    write_params(
        repo,
        {**SMALL_SEARCH, "tune": {**SMALL_SEARCH["tune"], "num_samples": 2, "max_failures": 1}},
    )
    # packed data training cannot use: labels 0-9 under a two-class metadata file (the search
    # reads both as they are; every trial's first training step fails, in every retry)
    meta_file = repo / "data" / "packed" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "classes": meta["classes"][:2]}))
    result = run(["python", "-m", "tasks.tune"], repo, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, result.stderr[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: tune: every trial failed, each after 1 retry; ")
    assert "IndexError: Target " in errors[0] and "is out of bounds" in errors[0]
    # the line names the file with the first failing trial's tracebacks: its run and its retry
    error_file = repo / errors[0].rsplit("(traceback: ", 1)[1].rstrip(")")
    assert error_file.name == "error.txt", errors[0]
    tracebacks = error_file.read_text()
    assert "Failure # 2" in tracebacks and "IndexError: Target " in tracebacks
    assert not (repo / "reports" / "tune" / "summary.json").exists()
    assert not (repo / "models" / "tune" / "best_params.yaml").exists()


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
    _prepare(repo, ("split", "augment"))  # the folds are made by split
    result = run(["python", "-m", "tasks.tune"], repo)
    trials = pd.read_csv(repo / "reports" / "tune" / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "finished").all(), result.stdout[-3000:]
    assert (trials["epochs_run"] == 1).all(), "a CV trial reports once: its mean over the folds"
    assert 0.0 < _summary(repo)["best_val_acc"] <= 1.0


def _trial_runs(experiment: Path) -> dict[str, tuple[str, int]]:
    """Per trial folder: what the trial has reported (its result.json) and how many times it
    has started (the count its trainable keeps in the folder)."""
    return {
        trial.name: (
            (trial / "result.json").read_text() if (trial / "result.json").exists() else "",
            attempts_made(trial),
        )
        for trial in experiment.glob("run_trial_*")
    }


@pytest.mark.slow
def test_an_interrupted_search_resumes_without_training_finished_trials_again(
    repo: Path, tmp_path: Path
) -> None:
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
    experiment = repo / EXPERIMENT
    first = _start_tune(repo, tmp_path / "first")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if sum(_epochs_reported(trial) >= 3 for trial in experiment.glob("run_trial_*")) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, (tmp_path / "first" / "err").read_text()[-3000:]
    first.send_signal(signal.SIGINT)
    returncode, out, err = _wait(first, tmp_path / "first")
    # SearchInterrupted is a UserError: exit 1 with one line saying how to go on
    assert returncode == 1, err[-3000:]
    assert "error: tune: search interrupted (" in err and "run again to resume it" in err
    assert "Traceback" not in out + err, err[-3000:]
    assert not (repo / "reports" / "tune" / "summary.json").exists()
    before = _trial_runs(experiment)
    finished_before = {name for name, (rows, _) in before.items() if rows.count("\n") == 3}
    assert 2 <= len(finished_before) < 4, before

    second = run(["python", "-m", "tasks.tune"], repo)
    assert "tune: resuming the interrupted search" in second.stdout
    summary = _summary(repo)
    assert summary["resumed"] is True and summary["trials"] == 4
    after = _trial_runs(experiment)
    # a trial that had finished was neither started again nor reported anything new
    for name in finished_before:
        assert after[name] == before[name], f"{name} was trained again"
    # and the search's results are theirs, not those of a new run of their configurations
    trials = _trials(repo)
    finished_ids = {_rows(experiment / name)[0]["trial_id"] for name in finished_before}
    assert finished_ids <= set(trials["trial_id"]), (sorted(finished_ids), list(trials["trial_id"]))
    assert len(trials) == 4 and (trials["status"] == "finished").all()
    assert (trials["epochs_run"] == 3).all()
    # the others ran (again) and completed, each epoch once
    for name in set(after) - finished_before:
        assert after[name][1] > before.get(name, ("", 0))[1], f"{name} did not run"
        assert sorted(row["epoch"] for row in _rows(experiment / name)) == [0, 1, 2], name


def _stop(head: subprocess.Popen) -> None:
    """Stop the cluster that `ray start --block` (`head`) runs, and only that one: `ray stop`
    would stop every Ray on the machine, other people's searches included."""
    try:
        processes = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        processes = []
    head.terminate()  # --block: Ray shuts its node down on SIGTERM
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait(timeout=30)
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:
        process.kill()


@pytest.mark.slow
def test_trials_run_on_an_existing_ray_cluster(repo: Path, tmp_path: Path) -> None:
    port = free_port()
    # everything on 127.0.0.1: Ray would otherwise advertise the machine's outward address
    # and `ray start` turns on token authentication (Ray 2.60): clients must use the token mode
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
    }
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen(
            [
                str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            cwd=repo, env={**os.environ, **env}, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        _wait_for_port(port, head)
        address = f"127.0.0.1:{port}"
        write_params(repo, {**SMALL_SEARCH, "tune": {**SMALL_SEARCH["tune"], "address": address}})
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
        # `tune.address: null` starts a Ray of its own even with this cluster on the machine
        write_params(repo, {"tune": {"address": None, "num_samples": 1, "max_epochs": 1}})
        local = run(["python", "-m", "tasks.tune"], repo)
        assert _summary(repo)["trials"] == 1, local.stdout[-2000:]
    finally:
        _stop(head)


@pytest.mark.slow
def test_ray_is_quiet_unless_asked(repo: Path) -> None:
    """One sixfold line per trial; Ray's trial tables only with tune.verbose: true."""
    write_params(repo, {**SMALL_SEARCH, "tune": {**SMALL_SEARCH["tune"], "num_samples": 2}})
    quiet = run(["python", "-m", "tasks.tune"], repo)
    output = quiet.stdout + quiet.stderr
    trial_lines = [line for line in output.splitlines() if line.startswith("tune: trial ")]
    assert sorted(line[:15] for line in trial_lines) == ["tune: trial 1/2", "tune: trial 2/2"]
    assert all("train.lr=" in line and "val_acc" in line for line in trial_lines), output
    assert "Trial status" not in output, output[-3000:]
    assert len(output.splitlines()) < 15, output[-3000:]

    write_params(repo, {"tune": {"verbose": True}})
    shutil.rmtree(repo / "models" / "tune")  # a fresh search, not the finished one
    loud = run(["python", "-m", "tasks.tune"], repo)
    assert "Trial status" in loud.stdout + loud.stderr
