"""train: fit the configured network with PyTorch Lightning; export the best epoch's weights.

Run on its own with ``python -m tasks.train`` (after augment).

- Data: the packed arrays stay uint8 in memory; batches are cut by index (no per-sample
  collation), moved to the device, augmented online there (`augment.online`), then normalized
  by the shared preprocessing (`tasks.modeling.preprocessing`).
- The library does the work (`tasks.modeling`); this module wires the final fit: tuned values,
  cross-validation, checkpoints and resume, dvclive, the export and the reports.
- Regularization: AdamW weight decay, dropout, label smoothing, early stopping on validation loss
  (`train.patience`), a one-cycle or cosine schedule, gradient clipping.
- Compute: `train.accelerator` (auto: the GPU when present), `devices`, `precision`, `strategy`
  (ddp), `num_nodes`. Seeded and deterministic on CPU.
- Checkpoints: `models/checkpoints/last.ckpt` every epoch. If a run is interrupted, the next run
  with the same params and data (the same fingerprint) resumes from it and says so. Ctrl-C
  (SIGINT) or SIGTERM stops the run with one line saying how many epochs were saved and exit
  code 128 + the signal (130, 143); nothing is exported.
- Transfer learning: `model.pretrained`, `model.freeze_backbone` (+ `train.finetune_epochs`:
  train the head alone for that many epochs, then unfreeze).
- k-fold cross-validation (`train.cv_folds` > 1): reports/cv.json, then the final fit.
- Epochs are counted from 1 everywhere a person sees them: the progress bar, messages,
  `reports/train.json` (`best_epoch`, `exported_epoch`), the plots and dvclive's steps.
- Reports: `reports/train.json` (best epoch = the exported epoch, train/val accuracy, gap),
  learning curves through dvclive (`reports/dvclive/`, DVC plots; one row per epoch, the step is
  the epoch) and `reports/plots/learning_curves.png`. Train accuracy is measured as validation
  accuracy is: in eval mode on un-augmented train images (a seeded sample as large as the val
  split); the training batches' own figure (augmented, dropout on) is `train_acc_augmented`.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tasks.core.config import Params, load_params_or_exit
from tasks.core.fingerprint import ResumeState, training_fingerprint
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.overrides import apply_tuned, tuned_summary
from tasks.core.plotting import integer_ticks, pyplot, save_figure
from tasks.core.runner import stage_main
from tasks.data.mirror import resolve_auto
from tasks.data.packed import Arrays, PackedMeta, load_arrays
from tasks.modeling.artifact import ModelCard, save_model
from tasks.modeling.batches import PackedDataModule
from tasks.modeling.callbacks import DvcLiveCurves, GlobalRandomState, History
from tasks.modeling.fit import (
    build_trainer,
    cross_validate,
    is_rank_zero,
    make_module,
    packed_originals,
    quiet_fit,
    regularization_callbacks,
    steps_per_epoch,
    train_reference,
)

log = logging.getLogger("sixfold.train")


def resume_point(key: str, checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None (and a clean checkpoint folder) to start over."""
    state, last = ResumeState(checkpoint_dir / "state.json"), checkpoint_dir / "last.ckpt"
    if state.matches_unfinished(key) and last.exists():
        return last
    if is_rank_zero():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True)
        state.start(key)
    return None


def epochs_saved(path: Path) -> int:
    """How many epochs a Lightning checkpoint written at an epoch's end holds: its `epoch`
    (counted from 0) + 1, so also the number, from 1, of the epoch it was written after. Read
    weights-only: nothing is unpickled."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1


class TrainingInterrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived while training; `line` is what to tell the user.

    Raised by the handler `interruptible` installs. A BaseException, as KeyboardInterrupt is, so
    no `except Exception` swallows it; not a KeyboardInterrupt, which Lightning turns into a
    silent `sys.exit(1)` (lightning/pytorch/trainer/call.py): Lightning's generic handler runs
    the callbacks' `on_exception` and raises it again, so it leaves `trainer.fit` before anything
    is exported.
    """

    def __init__(self, signal_number: int) -> None:
        self.signal_name = signal.Signals(signal_number).name
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for SIGINT
        self.line = (
            f"train: interrupted ({self.signal_name}) before an epoch of the final fit was saved; "
            "run dvc repro (or make run) to train again"
        )
        super().__init__(self.line)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise TrainingInterrupted (once; a second signal while the run stops
    is ignored, so the shutdown itself is not interrupted). Lightning's own SIGTERM handler
    calls this one after it, and gives it back when a fit ends."""
    raised = False

    def stop(signal_number: int, _frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise TrainingInterrupted(signal_number)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, stop) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def network_weights(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The network's part of a Lightning checkpoint's state dict."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    return {
        k.removeprefix("network."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("network.")
    }


def learning_curves(epochs: list[dict[str, float]]) -> Any:
    """The loss and accuracy per epoch (from 1, whole-number ticks) as a matplotlib figure."""
    plt = pyplot()
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    x = [e["epoch"] for e in epochs]
    lines = (("train", "", "-"), ("val", "", "--"), ("train", "_augmented", ":"))
    for split, variant, style in lines:
        label = f"{split} (augmented batches)" if variant else split
        for axis, stat in ((loss_axis, "loss"), (acc_axis, "acc")):
            axis.plot(x, [e.get(f"{split}_{stat}{variant}") for e in epochs], style, label=label)
    loss_axis.set(title="loss", xlabel="epoch")
    acc_axis.set(title="accuracy", xlabel="epoch")
    for axis in (loss_axis, acc_axis):
        integer_ticks(axis.xaxis)
        axis.legend()
    figure.tight_layout()
    return figure


def train(params: Params, layout: Layout | None = None) -> dict[str, Any] | None:
    """CV (if configured), then the final fit with checkpoints/resume; exports the best epoch.

    Reads and writes inside `layout` (default: the current repository). Returns the training
    report on the global-zero process, None on other DDP ranks.
    """
    layout = layout or Layout.discover()
    meta = PackedMeta.load(layout.packed_meta)
    arrays = load_arrays(layout, with_folds=params.train.cv_folds > 1)
    params = resolve_auto(params, layout)  # augment.hflip: auto -> the augment stage's verdict

    if params.train.cv_folds > 1 and is_rank_zero():
        write_json(layout.cv_report, cross_validate(params, arrays, meta))
    elif is_rank_zero():
        write_json(
            layout.cv_report, {"folds": 1, "note": "train.cv_folds <= 1: no cross-validation"}
        )

    L.seed_everything(params.seed, workers=True, verbose=False)
    key = training_fingerprint(params, layout)
    resume_from = resume_point(key, layout.checkpoint_dir)
    max_epochs = params.train.max_epochs
    if resume_from is not None and is_rank_zero():
        print(
            f"train: resuming after epoch {epochs_saved(resume_from)} of {max_epochs} from "
            f"{layout.relative(resume_from)} (the run before was interrupted)"
        )
    try:
        return final_fit(params, layout, arrays, meta, key, resume_from)
    except TrainingInterrupted as interruption:
        # from here on the checkpoint folder is this run's: last.ckpt is what a rerun resumes
        last = layout.checkpoint_dir / "last.ckpt"
        if last.exists():
            interruption.line = (
                f"train: interrupted ({interruption.signal_name}) after epoch "
                f"{epochs_saved(last)} of {max_epochs}; run dvc repro (or make run) to resume "
                f"from {layout.relative(last)}"
            )
        raise


def final_fit(
    params: Params,
    layout: Layout,
    arrays: Arrays,
    meta: PackedMeta,
    key: str,
    resume_from: Path | None,
) -> dict[str, Any] | None:
    """The fit whose best epoch is exported (from `resume_from` when given), and its reports."""
    checkpoint_dir = layout.checkpoint_dir
    reference = train_reference(arrays, packed_originals(arrays, meta), params.seed)
    module = make_module(params, meta, reference)
    network = module.network
    history = History()
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_acc", mode="max")
    # last.ckpt after every epoch, overwritten: the resume point. (`save_last=True` on the monitored
    # checkpoint writes it only in epochs that improve val_acc: a run killed after a plateau would
    # repeat every epoch since its last improvement.)
    last = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", enable_version_counter=False)
    curves = DvcLiveCurves(history, layout.dvclive_dir)  # after `history`: it writes its rows
    callbacks = [
        history,
        curves,
        best,
        last,
        GlobalRandomState(),
        *regularization_callbacks(params),
    ]
    steps = steps_per_epoch(arrays, params.train.batch_size)
    trainer = build_trainer(params, callbacks, steps_per_epoch=steps)
    data = PackedDataModule(arrays, params.train.batch_size, params.seed)
    with warnings.catch_warnings():
        # Lightning warns when a checkpoint folder is not empty; this one is the run's own:
        # resume_point emptied it for a fresh run but for state.json (this run's fingerprint),
        # or it holds the checkpoints this run resumes from.
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
        quiet_fit(trainer, module, data, ckpt_path=str(resume_from) if resume_from else None)

    if not trainer.is_global_zero:
        return None
    exported_epoch = int(history.epochs[-1]["epoch"]) if history.epochs else 0
    if best.best_model_path:
        network.load_state_dict(network_weights(best.best_model_path))
        exported_epoch = epochs_saved(Path(best.best_model_path))
    save_model(network.cpu(), ModelCard.for_training(params, meta), layout.models_dir)
    ResumeState(checkpoint_dir / "state.json").finish(key)

    top = history.best()
    # train accuracy: the un-augmented train reference in eval mode, as val is measured
    gap = (top.get("train_acc") or 0.0) - (top.get("val_acc") or 0.0)
    report = {
        "best_epoch": int(top.get("epoch", 0)),  # from 1, as every epoch a person sees
        "exported_epoch": exported_epoch,
        "epochs_run": len(history.epochs),
        "stopped_early": len(history.epochs) < params.train.max_epochs,
        "train_acc": top.get("train_acc"),
        "val_acc": top.get("val_acc"),
        "train_loss": top.get("train_loss"),
        "val_loss": top.get("val_loss"),
        "train_acc_augmented": top.get("train_acc_augmented"),
        "train_loss_augmented": top.get("train_loss_augmented"),
        "train_reference_images": len(reference[1]),
        "train_val_gap": gap,
        "overfit_warning": gap > params.train.overfit_warn_gap,
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "resumed": resume_from is not None,
    }
    write_json(layout.train_report, report)
    save_figure(learning_curves(history.epochs), layout.curves_plot)
    if report["overfit_warning"]:
        print(
            f"warning: train-val accuracy gap {gap:.3f} > train.overfit_warn_gap="
            f"{params.train.overfit_warn_gap}: the model may be overfitting; see "
            f"{layout.relative(layout.curves_plot)}",
            file=sys.stderr,
        )
    return report


def main() -> None:
    layout = Layout.discover()
    params, tuned = apply_tuned(load_params_or_exit(layout.params_file), layout.best_params)
    print(f"train: {tuned_summary(params, tuned, layout.best_params)}")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    try:
        with interruptible():
            report = train(params, layout)
    except TrainingInterrupted as interruption:
        if is_rank_zero():
            print(interruption.line, file=sys.stderr)
        raise SystemExit(interruption.exit_code) from None
    if report is None:
        return
    print(
        f"train: best epoch {report['best_epoch']} of {report['epochs_run']}: val accuracy "
        f"{report['val_acc']:.4f} (train {report['train_acc']:.4f}, gap "
        f"{report['train_val_gap']:+.4f}) on {report['device']} -> "
        f"{layout.relative(layout.models_dir)}/model.safetensors"
    )


if __name__ == "__main__":
    stage_main(main)
