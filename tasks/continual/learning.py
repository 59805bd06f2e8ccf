"""Fine-tuning the champion with replay, and scoring champion and challenger on old and new data.

The challenger starts from the champion's weights and keeps its architecture, classes and
preprocessing (the card's normalization: one preprocessing for every model of the registry). It
is trained by the same Lightning module and trainer as the train stage (`tasks.modeling`), with
online augmentation as `augment.*` says, for `continual.epochs` epochs at `continual.lr`, on the
batch's train part plus a seeded replay sample of the old train split (without any image of a
registered test set: `tasks.continual.replay`): training on the new images alone would let the
network forget the old task (catastrophic forgetting), and replaying old images is the simplest
remedy that keeps the data path as it is. The old validation split is
its validation data (logged only: the epochs are fixed, and the batch's test part is never
looked at during training). Seeded: on a CPU a rerun gives the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
from torch import nn

from tasks.core.config import Params, with_overrides
from tasks.core.fingerprint import fingerprint
from tasks.data.packed import Arrays, Split
from tasks.modeling.artifact import ModelCard
from tasks.modeling.batches import PackedDataModule
from tasks.modeling.callbacks import History
from tasks.modeling.fit import build_trainer, quiet_fit, steps_per_epoch
from tasks.modeling.module import Classifier
from tasks.registry.gate import correct_predictions

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
REPLAY_SEED_OFFSET = 1  # the replay sample's generator: seed + 1, apart from the split's


def replay_count(new_train: int, old_train: int, replay_fraction: float) -> int:
    """Old train images replayed: `replay_fraction` per new train image, at most all of them."""
    return min(old_train, round(replay_fraction * new_train))


def replay_sample(old_train: Split, count: int, seed: int) -> Split:
    """A seeded sample of `count` old train images (sorted: read in the arrays' order)."""
    images, labels = old_train
    generator = np.random.default_rng(seed + REPLAY_SEED_OFFSET)
    chosen = np.sort(generator.choice(len(labels), size=count, replace=False))
    return images[chosen], labels[chosen]


def finetune_params(params: Params) -> Params:
    """`params` with train.* set for fine-tuning: `continual.epochs` at `continual.lr`, every
    layer trained from the start (the backbone is already trained)."""
    continual = params.continual
    overrides = {
        "train.lr": continual.lr,
        "train.max_epochs": continual.epochs,
        "train.patience": continual.epochs,
        "train.finetune_epochs": 0,
        "train.cv_folds": 1,
        "model.freeze_backbone": False,
    }
    return with_overrides(params, overrides)


def challenger_card(champion: ModelCard, params: Params, parent: str, batch: str) -> ModelCard:
    """The champion's card (architecture, classes, preprocessing) with the fingerprint of the
    fine-tuning: its params, its parent and its data version."""
    key = fingerprint(
        {"continual": params.model_dump(mode="json"), "parent": parent, "batch": batch}
    )
    return champion.model_copy(update={"params_fingerprint": key})


def fine_tune(
    network: nn.Module, card: ModelCard, train: Split, val: Split, params: Params
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Fine-tune `network` (changed in place) on `train`; the network and its epoch history.

    `params` are :func:`finetune_params`'s. One device (no DDP: the batch is small).
    """
    L.seed_everything(params.seed, workers=True, verbose=False)
    # load_model returns it in eval mode, which Lightning keeps: dropout on again, but batch
    # norm stays in eval mode, its running statistics the old train split's. Re-estimated on a
    # small batch they moved the old task's normalization: on the digits with an inverted
    # batch, 0.0148 lost on the old test split instead of 0.0074 (4 mistakes of 270, not 2)
    network.train()
    for layer in network.modules():
        if isinstance(layer, BATCH_NORMS):
            layer.eval()
    module = Classifier(network, card.preprocessing(), len(card.classes), params)
    history = History()
    arrays = Arrays(train=train, val=val)
    steps = steps_per_epoch(arrays, params.train.batch_size)
    trainer = build_trainer(params, [history], distributed=False, steps_per_epoch=steps)
    quiet_fit(trainer, module, PackedDataModule(arrays, params.train.batch_size, params.seed))
    return module.network.cpu().eval(), history.epochs


@dataclass(frozen=True)
class Comparison:
    """Challenger and champion on one test set: accuracies and the per-image verdicts that the
    paired rule (`tasks.continual.decision`) compares."""

    images: int
    champion: float
    challenger: float
    correct_challenger: np.ndarray
    correct_champion: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        mine, theirs = self.correct_challenger, self.correct_champion
        return {
            "images": self.images,
            "champion": self.champion,
            "challenger": self.challenger,
            "difference": self.challenger - self.champion,
            "wins": int((mine & ~theirs).sum()),  # challenger right, champion wrong
            "losses": int((~mine & theirs).sum()),
        }


def compare(
    challenger: tuple[nn.Module, ModelCard], champion: tuple[nn.Module, ModelCard], test: Split
) -> Comparison:
    """Score both models on `test` (through their cards' preprocessing)."""
    images, labels = test
    mine = correct_predictions(*challenger, images, labels)
    theirs = correct_predictions(*champion, images, labels)
    return Comparison(len(labels), float(theirs.mean()), float(mine.mean()), mine, theirs)
