"""The trial the search hands to train (tasks/tuning/selection.py): the best, or with
`tune.cheaper_within_images` the cheapest of near-equals."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.tuning.selection import choose_trial


def _table(scores: list[float], costs: list[float | None]) -> pd.DataFrame:
    return pd.DataFrame({"best_val_acc": scores, "epoch_s": costs})


def test_a_cheaper_trial_within_one_validation_image_of_the_best_is_chosen() -> None:
    # 270 validation images: 0.9926 is one image below 0.9963 (float32 scores, as Lightning logs)
    table = _table([0.99259259, 0.99629629, 0.98888889], [3.0, 8.5, 3.0])
    choice = choose_trial(table, "val_acc", "max", val_images=270, within_images=1)
    assert (choice.index, choice.best_index) == (0, 1)
    assert choice.tolerance == pytest.approx(1 / 270)
    assert "cheapest trial within 1 validation image(s) (of 270)" in choice.reason
    # the default: the best score, whatever it costs
    assert choose_trial(table, "val_acc", "max", val_images=270).index == 1
    assert "3.0 s per epoch instead of 8.5" in choice.reason


def test_a_dearer_trial_two_images_better_wins() -> None:
    table = _table([0.7778, 0.7937], [3.0, 8.5])  # 126 validation images: 98 vs 100
    choice = choose_trial(table, "val_acc", "max", val_images=126, within_images=1)
    assert choice.index == 1 and choice.reason == "the best val_acc"


def test_among_equally_cheap_trials_the_higher_score_wins_and_unscored_ones_never() -> None:
    table = _table([0.99, float("nan"), 0.995, 0.993], [3.0, 1.0, 8.0, 3.0])
    assert choose_trial(table, "val_acc", "max", val_images=270, within_images=2).index == 3


def test_without_costs_or_with_val_loss_the_best_score_wins() -> None:
    table = _table([0.99, 0.995], [None, None])
    assert choose_trial(table, "val_acc", "max", 270, within_images=1).index == 1
    losses = pd.DataFrame({"best_val_loss": [0.2, 0.1], "epoch_s": [1.0, 9.0]})
    assert choose_trial(losses, "val_loss", "min", 270, within_images=1).index == 1
    with pytest.raises(ValueError, match="no trial"):
        choose_trial(_table([float("nan")], [1.0]), "val_acc", "max", 270)
