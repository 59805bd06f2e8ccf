"""End to end: training with DDP over two CPU processes, and resuming after kill -9.

Stages run as `python -m tasks.<stage>` and `dvc repro` in a temporary repository copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.conftest import VENV_BIN, run, write_params


def _prepare_data(repo: Path) -> None:
    for stage in ("source", "ingest", "validate", "split", "augment"):
        run(["python", "-m", f"tasks.{stage}"], repo)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains(repo: Path) -> None:
    """Real DDP over gloo; the first epoch trains only the head (frozen backbone: DDP must be
    told that some parameters get no gradient), then every layer."""
    train = {"strategy": "ddp", "devices": 2, "accelerator": "cpu", "max_epochs": 4}
    write_params(
        repo,
        {"train": {**train, "finetune_epochs": 1}, "model": {"freeze_backbone": True}},
    )
    _prepare_data(repo)
    result = run(["python", "-m", "tasks.train"], repo)
    report = json.loads((repo / "reports" / "train.json").read_text())
    assert report["world_size"] == 2, result.stdout
    assert "backbone unfrozen" in result.stdout
    assert report["val_acc"] > 0.6
    run(["python", "-m", "tasks.evaluate"], repo)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6


def _train_processes(parent: int) -> list:
    """The processes started (indirectly) by `parent` that run `tasks.train`: DVC starts the
    stage through `$SHELL -c`, and a shell that does not exec its command stays in between, so
    killing only the first match could kill the shell and leave training running as an orphan."""
    found = []
    for child in psutil.Process(parent).children(recursive=True):
        try:
            if "tasks.train" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _checkpoint_epoch(path: Path) -> int:
    """The epoch saved in a Lightning checkpoint; -1 while it is still being written."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # a half-written file while the trainer saves it
        return -1


def epochs_in(output: str, max_epochs: int, finished: bool = False) -> list[int]:
    """The train epochs (1-based) whose progress bar a stage's output shows: started, or with
    `finished` those that ended (their bar shows the epoch's val_acc). `/max_epochs` tells them
    from the tuning trials' bars."""
    pattern = rf"epoch (\d+)/{max_epochs}:[^\r\n]*" + ("val_acc=" if finished else "")
    return sorted({int(number) for number in re.findall(pattern, output)})


@pytest.mark.slow
def test_kill_9_mid_training_then_repro_trains_only_the_remaining_epochs(
    repo: Path, tmp_path: Path
) -> None:
    # enough epochs that the kill lands mid-training even on a fast machine (~0.5 s an epoch here)
    epochs = 30
    settings = {"train": {"max_epochs": epochs, "patience": 1000}, "augment": {"copies": 1}}
    write_params(repo, settings)
    run(["python", "-m", "tasks.source"], repo)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=log, stderr=log)
    state = repo / "models" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    killed = False
    victims: list = []
    while time.monotonic() < deadline and first.poll() is None:
        if state.exists() and _checkpoint_epoch(state) >= 2:
            victims = _train_processes(first.pid)
            if victims:
                # the python process first (deepest), then any shell around it
                for victim in reversed(victims):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.5)
    first.wait(timeout=120)
    log.close()
    # nothing of the first run may still be training (and writing checkpoints) behind our back
    _, alive = psutil.wait_procs(victims, timeout=30)
    assert not alive, alive
    first_output = (tmp_path / "first.log").read_text()
    assert killed, first_output[-3000:]
    assert first.returncode != 0
    progress = json.loads((state.parent / "state.json").read_text())
    assert not progress["complete"], "the kill must land before training finished"
    # epochs completed before the kill, as the checkpoint holds them: at most the epoch in
    # flight at the kill is lost (last.ckpt is written after every epoch)
    saved = _checkpoint_epoch(state) + 1
    finished_first = epochs_in(first_output, epochs, finished=True)
    assert saved in (len(finished_first), len(finished_first) - 1), (saved, finished_first)
    assert saved < epochs

    # up to evaluate: the stages after it are not this test's subject
    resumed = run(["dvc", "repro", "evaluate"], repo)
    output = resumed.stdout + resumed.stderr
    assert (
        f"train: resuming after epoch {saved} of {epochs} from models/checkpoints/last.ckpt"
    ) in output
    # the second run trained exactly the epochs the first did not save, and no other
    assert epochs_in(output, epochs) == list(range(saved + 1, epochs + 1)), output[-3000:]
    assert epochs_in(output, epochs, finished=True) == list(range(saved + 1, epochs + 1))
    resumed_accuracy = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    report = json.loads((repo / "reports" / "train.json").read_text())
    assert report["resumed"] is True and report["epochs_run"] == epochs
    # dvc repro deletes reports/dvclive (an output that does not persist) before the stage runs;
    # the resumed run writes the epochs restored from the checkpoint first: each epoch once
    series = sorted((repo / "reports" / "dvclive" / "plots" / "metrics").rglob("*.tsv"))
    assert len(series) >= 4
    for path in series:
        steps = [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]
        assert steps == list(range(1, epochs + 1)), (path.name, steps)

    # an uninterrupted run of the same pipeline, for comparison
    clean = run(["dvc", "repro", "--force", "--single-item", "train"], repo)
    assert epochs_in(clean.stdout + clean.stderr, epochs) == list(range(1, epochs + 1))
    clean_report = json.loads((repo / "reports" / "train.json").read_text())
    assert clean_report["resumed"] is False
    run(["dvc", "repro", "evaluate"], repo)
    clean_accuracy = json.loads((repo / "reports" / "metrics.json").read_text())["test"]
    assert abs(resumed_accuracy["accuracy"] - clean_accuracy["accuracy"]) <= 0.005
