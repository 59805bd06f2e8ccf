"""The trial the search hands to train (tasks/tuning/selection.py): the best, with
`tune.cheaper_within_images` the cheapest of near-equals, and the params.yaml configuration when
it is within `tune.keep_params_within_se` standard errors of the best; ASHA never stops that
configuration early (tasks/tuning/scheduling.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune.schedulers import TrialScheduler

from tasks.tuning.scheduling import KeepAnchorASHA, anchor_row, same_config
from tasks.tuning.selection import accuracy_standard_error, choose_trial

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


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


# the params.yaml configuration kept on noise: the one-standard-error rule


def test_the_standard_error_of_an_accuracy_is_never_zero() -> None:
    # digits: 270 validation images at 100 %: 0.005 (1.4 images); the photo set: 126 at 0.75
    assert accuracy_standard_error(1.0, 270) == pytest.approx(0.00514, abs=1e-5)
    assert accuracy_standard_error(0.75, 126) == pytest.approx(0.0384, abs=1e-4)


def test_the_params_configuration_within_one_standard_error_of_the_best_is_kept() -> None:
    # 126 validation images: the best 0.7937 (100), params 0.7619 (96): 4 images, SE 4.5 images
    table = _table([0.6984, 0.7619, 0.7937], [3.0, 3.0, 3.0])
    choice = choose_trial(table, "val_acc", "max", 126, params_row=1, keep_within_se=1.0)
    assert (choice.index, choice.best_index) == (1, 2)
    assert choice.reason.startswith("the params.yaml configuration: its val_acc 0.7619 is within")
    assert "of 126 validation images" in choice.reason
    # off (0), or the params row unknown: the best trial wins
    assert choose_trial(table, "val_acc", "max", 126, params_row=1, keep_within_se=0).index == 2
    assert choose_trial(table, "val_acc", "max", 126, keep_within_se=1.0).index == 2


def test_a_trial_that_beats_the_params_configuration_clearly_replaces_it() -> None:
    # 270 validation images: 0.9963 vs params 0.9815 is 4 images, the SE at 0.9963 is 1.5
    table = _table([0.9815, 0.9963], [3.0, 3.0])
    choice = choose_trial(table, "val_acc", "max", 270, params_row=0, keep_within_se=1.0)
    assert choice.index == 1 and choice.reason == "the best val_acc"
    # the params configuration as the best, or an unscored params row: the best, as always
    assert choose_trial(table, "val_acc", "max", 270, params_row=1, keep_within_se=1.0).index == 1
    unscored = _table([float("nan"), 0.99], [3.0, 3.0])
    assert choose_trial(unscored, "val_acc", "max", 270, params_row=0, keep_within_se=9).index == 1


def test_with_val_loss_the_params_configuration_has_no_standard_error_rule() -> None:
    losses = pd.DataFrame({"best_val_loss": [0.2, 0.19], "epoch_s": [1.0, 1.0]})
    assert choose_trial(losses, "val_loss", "min", 270, params_row=0, keep_within_se=5).index == 1


def _asha(anchor: dict) -> tuple[KeepAnchorASHA, list[SimpleNamespace]]:
    """Ray's ASHA bookkeeping (one bracket, rungs at 1 and 2 epochs, keep the best half) with
    four trials; the objects Ray passes as trials carry only what ASHA reads."""
    scheduler = KeepAnchorASHA(
        anchor, max_t=4, grace_period=1, reduction_factor=2, metric="val_acc", mode="max"
    )
    trials = [
        SimpleNamespace(trial_id=f"t{i}", config={"train.lr": lr})
        for i, lr in enumerate([0.01, 0.005, 0.003, 0.001])
    ]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    return scheduler, trials


def test_asha_never_stops_the_params_configuration_early() -> None:
    scheduler, (good, better, own, other) = _asha({"train.lr": 0.003})
    result = {"training_iteration": 1}
    assert scheduler.on_trial_result(None, good, {**result, "val_acc": 0.9}) == CONTINUE
    assert scheduler.on_trial_result(None, better, {**result, "val_acc": 0.95}) == CONTINUE
    # the two below the rung's best half: ASHA stops the other, not the params configuration
    assert scheduler.on_trial_result(None, other, {**result, "val_acc": 0.1}) == STOP
    assert scheduler.on_trial_result(None, own, {**result, "val_acc": 0.1}) == CONTINUE
    # at max_t it ends like every trial
    assert scheduler.on_trial_result(None, own, {"training_iteration": 4, "val_acc": 0.2}) == STOP
    # without an anchor it is ASHA
    plain, (a, b, c, d) = _asha({})
    for trial, score in ((a, 0.9), (b, 0.95), (d, 0.1)):
        plain.on_trial_result(None, trial, {**result, "val_acc": score})
    assert plain.on_trial_result(None, c, {**result, "val_acc": 0.1}) == STOP


def test_the_params_row_is_found_by_value_floats_up_to_rounding() -> None:
    anchor = {"train.lr": 0.003, "augment.hflip": True, "model.width": 32}
    configs = [
        {"train.lr": 0.003, "augment.hflip": False, "model.width": 32},
        {"train.lr": 0.0030000000000000001, "augment.hflip": True, "model.width": 32},
    ]
    assert anchor_row(configs, anchor) == 1
    assert anchor_row(configs[:1], anchor) is None and anchor_row(configs, None) is None
    assert not same_config({"train.lr": 0.0031, "augment.hflip": True, "model.width": 32}, anchor)
