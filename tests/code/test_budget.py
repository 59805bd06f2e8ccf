"""The search's size from `tune.time_budget_minutes` and the data (tasks/tuning/budget.py)."""

from __future__ import annotations

import pytest

from tasks.core.config import Params, SearchDimension, TuneSettings, load_params, with_overrides
from tasks.tuning.budget import (
    ASYNC_FACTOR,
    MIN_TRIALS,
    TARGET_STEPS,
    TRIAL_OVERHEAD_S,
    asha_epochs,
    capacities,
    measure_epoch_seconds,
    plan_search,
    rungs,
    trial_capacity,
)
from tests.conftest import REPO_ROOT


def _settings(**values: object) -> TuneSettings:
    base = load_params(REPO_ROOT / "params.yaml").tune.model_dump()
    return TuneSettings.model_validate({**base, **values})


def test_asha_rungs_and_the_expected_epochs_of_a_trial() -> None:
    assert rungs(16, 2, 3) == [2, 6, 16]
    assert rungs(6, 2, 3) == [2, 6]
    assert rungs(2, 2, 3) == [2]
    # every trial runs 2 epochs, a third 4 more, a ninth 10 more
    assert asha_epochs(16, 2, 3) == pytest.approx(2 + 4 / 3 + 10 / 9)
    assert asha_epochs(2, 2, 3) == 2


def test_a_bigger_budget_buys_more_trials_and_dearer_epochs_fewer() -> None:
    settings = _settings(time_budget_minutes=1.5, num_samples=64, max_epochs=16)
    base = plan_search(settings, steps_per_epoch=60, slots=2, epoch_seconds=3.0)
    bigger = plan_search(
        settings.model_copy(update={"time_budget_minutes": 6.0}), 60, 2, epoch_seconds=3.0
    )
    dearer = plan_search(settings, 60, 2, epoch_seconds=6.0)
    assert bigger.trials > base.trials
    # dearer epochs buy less search: fewer or shorter trials
    assert dearer.trials * dearer.max_epochs < base.trials * base.max_epochs
    assert base.max_epochs == -(-TARGET_STEPS // 60)  # ~500 steps: 9 epochs of 60
    # the plan fits the budget: its expected wall clock is at most the budget
    for plan in (base, bigger):
        assert plan.expected_minutes <= plan.budget_minutes + 1e-9
    assert "trials" in base.reason and "1.5 min" in base.reason


def test_epochs_per_trial_follow_the_data_size() -> None:
    settings = _settings(time_budget_minutes=60.0, num_samples=16, max_epochs=16)
    small = plan_search(settings, steps_per_epoch=10, slots=2, epoch_seconds=0.5)
    large = plan_search(settings, steps_per_epoch=250, slots=2, epoch_seconds=0.5)
    assert small.max_epochs == 16  # 500 steps would take 50 epochs: capped by tune.max_epochs
    assert large.max_epochs == settings.grace_period + 1  # 2 epochs already give 500 steps
    assert small.trials == large.trials == 16  # an hour pays for tune.num_samples: the cap


def test_a_tight_budget_shortens_trials_before_it_drops_below_the_minimum_of_trials() -> None:
    settings = _settings(time_budget_minutes=2.0, num_samples=16, max_epochs=16)
    plan = plan_search(settings, steps_per_epoch=30, slots=2, epoch_seconds=5.0)
    # 48 epochs in all: 16 wanted per trial would allow a few trials; shortened until 8 fit
    assert plan.trials >= MIN_TRIALS
    assert plan.max_epochs < 16
    cost = ASYNC_FACTOR * asha_epochs(plan.max_epochs, 2, 3) + TRIAL_OVERHEAD_S / 5.0
    # the params.yaml configuration's trial runs its every epoch (tune.keep_params_within_se)
    full = plan.max_epochs + TRIAL_OVERHEAD_S / 5.0
    assert full + (plan.trials - 1) * cost <= 48 + 1e-9
    assert "cut to" in plan.reason
    hopeless = plan_search(settings, steps_per_epoch=30, slots=2, epoch_seconds=600.0)
    assert hopeless.max_epochs == settings.grace_period and hopeless.trials == 2


def test_the_params_configuration_trained_to_the_end_is_paid_for() -> None:
    kept = _settings(time_budget_minutes=1.5, num_samples=64, max_epochs=16)
    assert kept.keep_params_within_se > 0  # the shipped setting
    plan = plan_search(kept, steps_per_epoch=28, slots=2, epoch_seconds=2.0)
    free = plan_search(
        kept.model_copy(update={"keep_params_within_se": 0.0}), 28, 2, epoch_seconds=2.0
    )
    # 90 epochs of budget, 16 per trial: ASHA's expected 4.4 (x1.3) + 2.5 overhead = 8.3 each,
    # 90 / 8.3 = 10.9; with the kept trial's 16 + 2.5 first: 1 + 71.5 / 8.3 = 9.6
    assert plan.max_epochs == free.max_epochs == 16
    assert (free.trials, plan.trials) == (10, 9)
    assert plan.expected_minutes <= 1.5 + 1e-9


def test_without_a_budget_the_search_runs_as_set() -> None:
    settings = _settings(time_budget_minutes=None, num_samples=5, max_epochs=7)
    plan = plan_search(settings, steps_per_epoch=30, slots=2, epoch_seconds=None)
    assert (plan.trials, plan.max_epochs, plan.budget_minutes) == (5, 7, None)
    assert "null" in plan.reason


def test_the_budget_is_checked(tmp_path) -> None:
    with pytest.raises(ValueError, match="time_budget_minutes"):
        _settings(time_budget_minutes=0)


def test_an_epoch_is_measured_for_every_capacity_the_space_can_pick() -> None:
    from tasks.data.packed import PackedMeta

    # no augment stage to measure flips (augment.hflip: auto): fixed off
    params = with_overrides(load_params(REPO_ROOT / "params.yaml"), {"augment.hflip": False})
    dims = {
        **params.tune.flat_space(),
        "model.arch": SearchDimension(type="choice", values=["cnn", "resnet18"]),
    }
    assert len(capacities(params, dims)) == 4
    without = {k: v for k, v in dims.items() if not k.startswith("model.")}
    assert capacities(params, without) == [{"model.arch": "cnn", "model.width": 32}]
    meta = PackedMeta.create(
        classes=["a", "b"],
        image_size=8,
        channels=1,
        mean=[0.5],
        std=[0.25],
        counts={"train": 2},
        near_duplicate_pairs_across_splits=0,
    )
    tiny = Params.model_validate({**params.model_dump(), "train": {"batch_size": 4}})
    seconds = measure_epoch_seconds(tiny, meta, without, steps_per_epoch=3, threads=1)
    assert list(seconds) == ["cnn/32"] and seconds["cnn/32"] > 0
    assert trial_capacity({"model.width": 16}, params) == "cnn/16"
    assert trial_capacity({}, params) == f"cnn/{params.model.width}"
