"""Lightning callbacks: the per-epoch history and its dvclive curves, a light progress bar, the
frozen backbone and torch's random state in checkpoints.

Epochs are counted from 1 wherever a person sees them (the bar, messages, `History`, reports,
dvclive's steps, plots); only Lightning's own `current_epoch` and a checkpoint's `epoch` count
from 0 (a checkpoint written after the third epoch holds `epoch: 2`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from tqdm import tqdm

from tasks.modeling.networks import set_backbone_trainable

# train_*: the un-augmented train sample in eval mode, after the epoch (what the train/val gap
# compares); train_*_augmented: the epoch's training batches as trained (augmented, dropout on)
SHOWN = ("train_loss", "train_acc", "val_loss", "val_acc")
METRICS = (*SHOWN, "train_loss_augmented", "train_acc_augmented")


class History(L.Callback):
    """Per-epoch metrics, `epoch` counted from 1; saved in checkpoints so a resumed run keeps
    the whole curve."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # runs after the epoch's validation loop, so train and val metrics are both current
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in METRICS}
        self.epochs.append({"epoch": trainer.current_epoch + 1, **metrics})

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))

    def best(self) -> dict[str, float]:
        """The first epoch with the highest val_acc: the epoch whose weights train exports.

        The same rule as the checkpoint that holds them (`ModelCheckpoint(monitor="val_acc",
        mode="max")` replaces its best only on a strictly higher value), so a tie goes to the
        earlier epoch here too.
        """
        scored = [e for e in self.epochs if "val_acc" in e]
        return max(scored, key=lambda e: e["val_acc"]) if scored else {}


class EpochProgress(L.Callback):
    """One progress bar per epoch, with the epoch's metrics when it ends.

    Lightning's own bar refreshes its postfix (a device sync per metric) and draws a second bar
    for every validation pass; on small CPU models that costs several percent of training time.
    tqdm throttles drawing itself (`mininterval`), so updating it every batch is cheap.
    """

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            total = int(trainer.num_training_batches)
            epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            self.bar = tqdm(total=total, desc=epoch, unit="batch", mininterval=0.5, leave=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.bar is not None:
            metrics = trainer.callback_metrics
            shown = {k: f"{float(metrics[k]):.4f}" for k in SHOWN if k in metrics}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, error: BaseException):
        # an interrupted epoch: end its bar's line, so what is printed next starts on its own
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def dvclive_name(metric: str) -> str:
    """A History metric as dvclive files it: `val_acc` -> `val/acc` (plots/metrics/val/acc.tsv),
    `train_loss_augmented` -> `train/loss_augmented`."""
    split, _, statistic = metric.partition("_")
    return f"{split}/{statistic}"


class DvcLiveCurves(L.Callback):
    """The learning curves as dvclive series (`<directory>/plots/metrics/{train,val}/*.tsv`,
    the DVC plots): one row per epoch, its step the epoch (from 1), written from `history`.

    Every fit starts the folder afresh and writes the epochs `history` already holds first: on a
    resumed run those are the epochs restored from the checkpoint, so the series continues where
    the interrupted run stopped, each epoch once, even though `dvc repro` deletes the folder
    (a non-persistent output) before the stage runs. (Lightning's DVCLiveLogger logs at the end of
    training and again at the end of validation, each time with the batch count as the step and
    an `epoch` row: every epoch twice in epoch.tsv, and a resumed run's series began again.)
    Written on the global-zero process only.
    """

    def __init__(self, history: History, directory: Path) -> None:
        self.history = history
        self.directory = directory
        self.live: Any = None
        self.written = 0

    def _write_new_epochs(self) -> None:
        for row in self.history.epochs[self.written :]:
            self.live.step = int(row["epoch"])
            for metric in METRICS:
                if row.get(metric) is not None:
                    self.live.log_metric(dvclive_name(metric), float(row[metric]))
        self.written = len(self.history.epochs)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # after the checkpoint (and with it `history`) was restored
        if not trainer.is_global_zero:
            return
        from dvclive import Live  # imported here: only the final fit writes curves

        self.live = Live(
            str(self.directory), resume=False, save_dvc_exp=False, dvcyaml=False, report=None
        )
        self.written = 0
        self._write_new_epochs()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.live is not None:
            self._write_new_epochs()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._end()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, error: BaseException):
        self._end()  # the epochs that finished before the interruption stay in the series

    def _end(self) -> None:
        if self.live is not None:
            self._write_new_epochs()
            self.live.end()
            # dvclive's summary (metrics.json) repeats reports/train.json's last epoch; it is no
            # DVC output, so `make clean` and the run cache would leave git with a stray file
            Path(self.live.metrics_file).unlink(missing_ok=True)
            self.live = None


class FreezeBackbone(L.Callback):
    """Train only the head for the first `epochs` epochs (all of them when epochs == 0).

    While frozen the backbone is also in eval mode (`set_backbone_trainable`), so its BatchNorm
    statistics stay as loaded. Lightning 2.6 sets no module's mode when an epoch starts, and its
    validation loop gives every module back the mode it found it in, so setting it when the fit
    starts (a resumed run starts mid-schedule) and when each epoch starts holds for the epoch.
    """

    def __init__(self, epochs: int, max_epochs: int):
        self.until = epochs if epochs > 0 else max_epochs

    def _apply(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.until
        set_backbone_trainable(module.network, trainable=not frozen)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._apply(trainer, module)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._apply(trainer, module)
        if trainer.current_epoch == self.until and trainer.is_global_zero:
            # current_epoch counts from 0: the epoch after the `until` head-only ones
            print(
                f"train: epoch {self.until + 1}/{trainer.max_epochs}: backbone unfrozen, "
                "fine-tuning every layer"
            )


class GlobalRandomState(L.Callback):
    """Saves torch's global random state in every checkpoint and restores it on resume.

    Dropout draws from it (augmentation and shuffling have their own seeded generators), so a
    run resumed from a checkpoint continues the very random stream an uninterrupted run would
    have: on the CPU the resumed and the uninterrupted run give the same model.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"torch_cpu": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch_cpu" in state_dict:
            torch.set_rng_state(state_dict["torch_cpu"])
