"""Epochs counted from 1 everywhere, dvclive's series (one row per epoch, continued on resume),
and an interrupted training run (SIGINT/SIGTERM: one line, exit 128 + signal, nothing exported).

The train stage runs here on small synthetic arrays (tests/code/test_train.py's quadrant toy
task) in a folder of its own; the end-to-end kill -9 and resume through `dvc repro` is in
tests/system/test_train_pipeline.py.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tasks.core.config import Params
from tasks.core.fingerprint import ResumeState, training_fingerprint
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.data.packed import Arrays
from tasks.train import learning_curves
from tasks.train import train as train_stage
from tests.code.test_train import META, _params, _toy_arrays, _write_packed
from tests.conftest import REPO_ROOT, write_params

TRAIN = {"accelerator": "cpu", "batch_size": 16, "patience": 1000, "schedule": "constant"}


def _toy_layout(root: Path, n_train: int = 64) -> Layout:
    """A folder with packed toy arrays, as the augment stage leaves them for train."""
    layout = Layout(root)
    arrays = Arrays(
        train=_toy_arrays(n_train, seed=1).train,
        val=_toy_arrays(32, seed=2).train,
        test=_toy_arrays(16, seed=3).train,
    )
    meta = META.model_copy(update={"counts": {"train": n_train, "val": 32, "test": 16}})
    _write_packed(layout, arrays, meta)
    return layout


def _train_params(max_epochs: int) -> Params:
    return _params(model={"width": 8}, train={**TRAIN, "max_epochs": max_epochs})


def dvclive_series(layout: Layout) -> dict[str, list[int]]:
    """The steps of every dvclive series, by file (relative to plots/metrics)."""
    folder = layout.dvclive_dir / "plots" / "metrics"
    series = {}
    for path in sorted(folder.rglob("*.tsv")):
        with path.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        series[str(path.relative_to(folder))] = [int(row["step"]) for row in rows]
    return series


def val_accuracies(layout: Layout) -> list[float]:
    path = layout.dvclive_dir / "plots" / "metrics" / "val" / "acc.tsv"
    with path.open() as handle:
        return [float(row["acc"]) for row in csv.DictReader(handle, delimiter="\t")]


def test_a_fresh_run_counts_epochs_from_1_and_logs_each_epoch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dvclive: one row per epoch and series, its step the epoch (1, 2, 3; no epoch.tsv with
    every row twice); reports/train.json's best and exported epochs on the same count; no
    warning that the checkpoint folder is not empty (it holds only this run's state.json)."""
    layout = _toy_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = train_stage(_train_params(3), layout)
    assert report is not None
    messages = [str(warning.message) for warning in caught]
    assert not [m for m in messages if "exists and is not empty" in m], messages

    series = dvclive_series(layout)
    assert {"train/acc.tsv", "train/loss.tsv", "val/acc.tsv", "val/loss.tsv"} <= set(series)
    assert all(steps == [1, 2, 3] for steps in series.values()), series
    # only the series (DVC plots); dvclive's own summary would be a file no stage declares
    assert sorted(p.name for p in layout.dvclive_dir.iterdir()) == ["plots"]

    accuracies = val_accuracies(layout)
    first_best = 1 + accuracies.index(max(accuracies))
    assert report["best_epoch"] == first_best
    best = torch.load(layout.checkpoint_dir / "best.ckpt", map_location="cpu", weights_only=True)
    assert report["exported_epoch"] == best["epoch"] + 1 == first_best
    assert report["epochs_run"] == 3 and report["stopped_early"] is False

    # a second fresh run (other params: nothing to resume) starts the series afresh
    report = train_stage(_train_params(2), layout)
    assert all(steps == [1, 2] for steps in dvclive_series(layout).values())


def test_learning_curves_have_whole_epoch_ticks_from_1() -> None:
    epochs = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": 0.5, "val_acc": 0.5}
        for e in (1, 2, 3)
    ]
    figure = learning_curves(epochs)
    for axis in figure.axes:
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), shown
        assert min(line.get_xdata()[0] for line in axis.get_lines()) == 1


def test_a_resumed_run_continues_the_dvclive_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that stopped after epoch 3 of 5 (its state.json unfinished, as an interrupted run
    leaves it) resumes; reports/dvclive was deleted in between, as `dvc repro` deletes a stage's
    outputs before running it, and still holds every epoch once afterwards."""
    layout = _toy_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    train_stage(_train_params(3), layout)
    before = val_accuracies(layout)
    capsys.readouterr()

    params = _train_params(5)
    ResumeState(layout.checkpoint_dir / "state.json").start(training_fingerprint(params, layout))
    for path in layout.dvclive_dir.rglob("*"):
        if path.is_file():
            path.unlink()
    report = train_stage(params, layout)
    output = capsys.readouterr()
    assert report is not None and report["resumed"] is True
    assert "train: resuming after epoch 3 of 5 from models/checkpoints/last.ckpt" in output.out, (
        output.out
    )
    assert epochs_started(output.err, 5) == [4, 5]
    assert all(steps == [1, 2, 3, 4, 5] for steps in dvclive_series(layout).values())
    assert val_accuracies(layout)[:3] == before
    assert report["epochs_run"] == 5


def epochs_started(output: str, max_epochs: int) -> list[int]:
    """The epochs (from 1) whose progress bar the output shows, each `n/max_epochs`."""
    return sorted({int(n) for n in re.findall(rf"epoch (\d+)/{max_epochs}\b", output)})


def _checkpoint_epochs(path: Path) -> int:
    """Epochs saved in a checkpoint (0 while there is none or it is being written)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1
    except Exception:
        return 0


def _start_train(root: Path) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.train"],
        cwd=root,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt(root: Path, sent: signal.Signals, epochs: int) -> int:
    """Train in `root` and send `sent` once two epochs are saved; check what the run said and
    left; return the epochs saved."""
    layout = Layout(root)
    last = layout.checkpoint_dir / "last.ckpt"
    run = _start_train(root)
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        if _checkpoint_epochs(last) >= 2:
            run.send_signal(sent)
            break
        time.sleep(0.05)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 128 + sent, (run.returncode, out[-2000:], err[-3000:])
    saved = _checkpoint_epochs(last)
    assert 2 <= saved < epochs
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == [
        f"train: interrupted ({sent.name}) after epoch {saved} of {epochs}; run dvc repro "
        "(or make run) to resume from models/checkpoints/last.ckpt"
    ], err[-3000:]
    assert "Traceback" not in err
    assert not (layout.models_dir / "model.safetensors").exists(), "nothing is exported"
    assert read_json(layout.checkpoint_dir / "state.json")["complete"] is False
    assert all(steps == list(range(1, saved + 1)) for steps in dvclive_series(layout).values())
    return saved


def _interruptible_folder(root: Path, epochs: int) -> None:
    _toy_layout(root, n_train=256)
    (root / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    write_params(
        root,
        {
            "model": {"width": 8},
            "train": {**TRAIN, "max_epochs": epochs},
            "augment": {"hflip": False},  # toy arrays, no augment stage to measure flips
        },
    )


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_ctrl_c_says_interrupted_exits_130_and_exports_nothing(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) mid-training: one line naming the epochs saved and how to resume, exit
    130, no traceback, no model (Lightning alone turns Ctrl-C into a silent exit 1)."""
    _interruptible_folder(tmp_path, epochs=12)
    _interrupt(tmp_path, signal.SIGINT, epochs=12)


@pytest.mark.slow
def test_sigterm_then_a_rerun_resumes_after_the_saved_epochs(tmp_path: Path) -> None:
    """SIGTERM (a stopped job) as Ctrl-C, exit 143; `python -m tasks.train` again resumes: the
    bars show the remaining epochs of max_epochs, dvclive every epoch once."""
    epochs = 12
    _interruptible_folder(tmp_path, epochs)
    saved = _interrupt(tmp_path, signal.SIGTERM, epochs)
    layout = Layout(tmp_path)

    second = _start_train(tmp_path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert f"train: resuming after epoch {saved} of {epochs} from " in out
    assert epochs_started(err, epochs) == list(range(saved + 1, epochs + 1))
    assert all(steps == list(range(1, epochs + 1)) for steps in dvclive_series(layout).values())
    report = read_json(layout.train_report)
    assert report["resumed"] is True and report["epochs_run"] == epochs
    assert 1 <= report["best_epoch"] <= epochs
    assert (layout.models_dir / "model.safetensors").exists()


def test_search_plots_have_whole_number_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reports/tune/trials.png: epochs from 1 on whole-number ticks (and trials in
    best_so_far.png), not matplotlib's 0.25 steps for a short search."""
    import pandas as pd

    from tasks.tuning import reports

    figures = {}
    monkeypatch.setattr(
        reports, "save_figure", lambda figure, path: figures.update({path.name: figure})
    )
    results = [
        SimpleNamespace(metrics_dataframe=pd.DataFrame({"val_acc": values}))
        for values in ([0.5, 0.6, 0.7], [0.4, 0.45])
    ]
    table = pd.DataFrame({"time_s": [1.0, 2.0], "best_val_acc": [0.7, 0.45]})
    reports.plot_trials(results, table, "val_acc", "max", tmp_path)
    for name in ("trials.png", "best_so_far.png"):
        (axis,) = figures[name].axes
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), (name, shown)
    (epochs_axis,) = figures["trials.png"].axes
    assert min(line.get_xdata()[0] for line in epochs_axis.get_lines()) == 1
