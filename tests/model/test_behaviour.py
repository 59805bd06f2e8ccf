"""Behavioural tests of a trained model (digits): invariance to small shifts and rotations inside
the augmentation ranges, a minimum accuracy per class, better than the same-run baseline, and
the exported model computes exactly what the trained Lightning module computes."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from tasks.core.config import load_params
from tasks.core.layout import Layout
from tasks.data.mirror import resolve_auto
from tasks.data.packed import PackedMeta, load_split
from tasks.modeling.artifact import load_model
from tasks.modeling.checks import beats_baseline, invariance, per_class_accuracy
from tasks.modeling.fit import make_module

pytestmark = pytest.mark.slow


def test_predictions_survive_small_shifts_and_rotations(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    params = load_params(layout.params_file)
    network, card = load_model(layout.models_dir)
    test_x, _ = load_split("test", layout.packed_dir)
    # half of the ranges the model was trained on: one pixel at 16 px, 6 degrees
    result = invariance(
        network,
        card.preprocessing(),
        test_x,
        shift_fraction=params.augment.translate / 2,
        degrees=params.augment.rotation / 2,
        min_agreement=0.9,
    )
    assert result.passed, str(result)


def test_every_class_reaches_a_minimum_accuracy(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    network, card = load_model(layout.models_dir)
    test_x, test_y = load_split("test", layout.packed_dir)
    result = per_class_accuracy(network, card.preprocessing(), test_x, test_y, card.classes, 0.85)
    assert result.passed, str(result)


def test_the_network_beats_the_same_run_baseline(trained_repo: Path) -> None:
    metrics = json.loads(Layout(trained_repo).metrics_file.read_text())
    result = beats_baseline(metrics["test"]["accuracy"], metrics["baseline"]["accuracy"])
    assert result.passed, str(result)


def test_the_exported_model_computes_what_training_computed(trained_repo: Path) -> None:
    """The export (weights + card's preprocessing) gives the Lightning module's outputs on the
    best checkpoint, through the module's own batch path (on_after_batch_transfer + forward)."""
    layout = Layout(trained_repo)
    # as the train stage does: augment.hflip: auto -> the augment stage's verdict
    params = resolve_auto(load_params(layout.params_file), layout)
    meta = PackedMeta.load(layout.packed_meta)
    network, card = load_model(layout.models_dir)
    val_x, val_y = load_split("val", layout.packed_dir)

    module = make_module(params, meta)
    checkpoint = torch.load(
        layout.checkpoint_dir / "best.ckpt", map_location="cpu", weights_only=True
    )
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with torch.no_grad():
        batch = module.on_after_batch_transfer(
            (torch.from_numpy(val_x), torch.from_numpy(val_y)), 0
        )
        in_training = module(batch[0])
        exported = network(card.preprocessing()(val_x))
    assert torch.equal(in_training, exported)
    assert card.classes == meta.classes and card.normalization.mean == meta.mean
    assert (exported.argmax(1).numpy() == val_y).mean() > 0.9  # a real model, not a constant
