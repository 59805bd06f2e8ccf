"""The Ray Tune trainable: one trial (or, with CV, its folds), reporting after every epoch.

Every epoch the trial reports to Tune the best val_acc / val_loss so far (a trial is as good as
its best epoch, the one train exports; the running best is also less noisy for ASHA's early
cuts) beside the epoch's own values, with a Lightning checkpoint, so a retried or restored trial
restarts from its last epoch instead of from scratch.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import lightning as L

from tasks.data.packed import Arrays, PackedMeta
from tasks.modeling.fit import cross_validate, fit_once
from tasks.tuning.attempts import count_attempt
from tasks.tuning.space import trial_params

CHECKPOINT_FILE = "trial.ckpt"


class ReportToTune(L.Callback):
    """At the end of each training epoch (its validation done): report the running best and the
    epoch's metrics, with a checkpoint, through Ray's public `tune.report`.

    Not at the end of validation: for Lightning that is the middle of the epoch, and a fit
    resumed from there ends the epoch again without its validation metrics, so EarlyStopping
    fails the retried trial ("conditioned on metric `val_loss` which is not available", Lightning
    issues 13225 and 18595). A checkpoint from the epoch's end resumes with the next epoch.
    """

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.best: dict[str, float] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from ray import tune

        metrics = trainer.callback_metrics
        if "val_acc" not in metrics or "val_loss" not in metrics:
            return
        epoch_values = {
            "val_acc": float(metrics["val_acc"]),
            "val_loss": float(metrics["val_loss"]),
        }
        self.best = {
            "val_acc": max(self.best.get("val_acc", -1.0), epoch_values["val_acc"]),
            "val_loss": min(self.best.get("val_loss", float("inf")), epoch_values["val_loss"]),
        }
        report = {
            **self.best,
            **{f"epoch_{k}": v for k, v in epoch_values.items()},
            "attempt": self.attempt,
            "epoch": trainer.current_epoch,
        }
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))


def run_trial(
    config: dict[str, Any], base: dict[str, Any], arrays: Arrays, meta: PackedMeta
) -> None:
    """Ray Tune trainable: train `base` params with the trial's `config` values."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(base["tune"]["cpus_per_trial"])))
    params = trial_params(base, config)
    attempt = count_attempt(tune.get_context().get_trial_dir())
    if params.train.cv_folds > 1:
        summary = cross_validate(params, arrays, meta)
        tune.report(
            {**{k: v for k, v in summary["mean"].items() if v is not None}, "attempt": attempt}
        )
        return

    checkpoint = tune.get_checkpoint()
    ckpt_path = None
    if checkpoint is not None:
        ckpt_path = os.path.join(checkpoint.to_directory(), CHECKPOINT_FILE)
    fit_once(params, arrays, meta, extra_callbacks=[ReportToTune(attempt)], ckpt_path=ckpt_path)
