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
  with the same params and data (the same fingerprint) resumes from it and says so.
- Transfer learning: `model.pretrained`, `model.freeze_backbone` (+ `train.finetune_epochs`:
  train the head alone for that many epochs, then unfreeze).
- k-fold cross-validation (`train.cv_folds` > 1): reports/cv.json, then the final fit.
- Reports: `reports/train.json` (best epoch = the exported epoch, train/val accuracy, gap),
  learning curves through dvclive (`reports/dvclive/`, DVC plots) and
  `reports/plots/learning_curves.png`. Train accuracy is measured as validation accuracy is: in
  eval mode on un-augmented train images (a seeded sample as large as the val split); the
  training batches' own figure (augmented, dropout on) is `train_acc_augmented`.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tasks.core.config import Params, load_params_or_exit
from tasks.core.fingerprint import ResumeState, training_fingerprint
from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.core.overrides import apply_tuned
from tasks.core.plotting import pyplot, save_figure
from tasks.core.runner import stage_main
from tasks.data.packed import PackedMeta, load_arrays
from tasks.modeling.artifact import ModelCard, save_model
from tasks.modeling.batches import PackedDataModule
from tasks.modeling.callbacks import GlobalRandomState, History
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


def checkpoint_epoch(path: Path) -> Any:
    """The epoch recorded in a Lightning checkpoint (read weights-only: nothing is unpickled)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("epoch", "?")


def network_weights(checkpoint_path: str) -> dict[str, torch.Tensor]:
    """The network's part of a Lightning checkpoint's state dict."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    return {
        k.removeprefix("network."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("network.")
    }


def plot_curves(epochs: list[dict[str, float]], path: Path) -> None:
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
    loss_axis.legend()
    acc_axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def train(params: Params, layout: Layout | None = None) -> dict[str, Any] | None:
    """CV (if configured), then the final fit with checkpoints/resume; exports the best epoch.

    Reads and writes inside `layout` (default: the current repository). Returns the training
    report on the global-zero process, None on other DDP ranks.
    """
    layout = layout or Layout.discover()
    meta = PackedMeta.load(layout.packed_meta)
    arrays = load_arrays(layout, with_folds=params.train.cv_folds > 1)

    if params.train.cv_folds > 1 and is_rank_zero():
        write_json(layout.cv_report, cross_validate(params, arrays, meta))
    elif is_rank_zero():
        write_json(
            layout.cv_report, {"folds": 1, "note": "train.cv_folds <= 1: no cross-validation"}
        )

    L.seed_everything(params.seed, workers=True, verbose=False)
    checkpoint_dir = layout.checkpoint_dir
    key = training_fingerprint(params, layout)
    resume_from = resume_point(key, checkpoint_dir)
    if resume_from is not None and is_rank_zero():
        print(
            f"train: resuming from {layout.relative(resume_from)} (epoch "
            f"{checkpoint_epoch(resume_from)} done) after an interrupted run"
        )

    reference = train_reference(arrays, packed_originals(arrays, meta), params.seed)
    module = make_module(params, meta, reference)
    network = module.network
    history = History()
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val_acc", mode="max")
    # last.ckpt after every epoch, overwritten: the resume point. (`save_last=True` on the monitored
    # checkpoint writes it only in epochs that improve val_acc: a run killed after a plateau would
    # repeat every epoch since its last improvement.)
    last = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", enable_version_counter=False)
    from dvclive.lightning import DVCLiveLogger

    logger = DVCLiveLogger(
        dir=str(layout.dvclive_dir),
        save_dvc_exp=False,
        dvcyaml=False,
        resume=resume_from is not None,
    )
    callbacks = [history, best, last, GlobalRandomState(), *regularization_callbacks(params)]
    steps = steps_per_epoch(arrays, params.train.batch_size)
    trainer = build_trainer(params, callbacks, logger=logger, steps_per_epoch=steps)
    data = PackedDataModule(arrays, params.train.batch_size, params.seed)
    quiet_fit(trainer, module, data, ckpt_path=str(resume_from) if resume_from else None)

    if not trainer.is_global_zero:
        return None
    exported_epoch = int(history.epochs[-1]["epoch"]) if history.epochs else -1
    if best.best_model_path:
        network.load_state_dict(network_weights(best.best_model_path))
        exported_epoch = int(checkpoint_epoch(Path(best.best_model_path)))
    save_model(network.cpu(), ModelCard.for_training(params, meta), layout.models_dir)
    ResumeState(checkpoint_dir / "state.json").finish(key)

    top = history.best()
    # train accuracy: the un-augmented train reference in eval mode, as val is measured
    gap = (top.get("train_acc") or 0.0) - (top.get("val_acc") or 0.0)
    report = {
        "best_epoch": int(top.get("epoch", -1)),
        "exported_epoch": exported_epoch,
        "epochs_run": len(history.epochs),
        "stopped_early": trainer.current_epoch < params.train.max_epochs,
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
    plot_curves(history.epochs, layout.curves_plot)
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
    if tuned:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.items()
        )
        print(f"train: using the tuned values from {layout.relative(layout.best_params)}: {shown}")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    report = train(params, layout)
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
