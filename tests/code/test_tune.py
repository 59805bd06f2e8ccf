"""Hyperparameter search: the space and its checks, the searcher, and the disabled mode.

Searches on Ray (a killed trial retried, trials that fail for good, CV trials, resume, an existing
cluster) are in tests/system/test_tune_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.core.config import Params, load_params
from tasks.core.errors import ConfigError
from tasks.core.layout import Layout
from tasks.tune import summary_line
from tasks.tuning.attempts import attempts_made, count_attempt
from tasks.tuning.searcher import DistinctSuggestions, make_searcher
from tasks.tuning.space import search_space, trial_params
from tests.conftest import REPO_ROOT, run, write_params


def _params(overrides: dict) -> Params:
    raw = load_params(REPO_ROOT / "params.yaml").model_dump()
    # no augment stage to measure flips (augment.hflip: auto): fixed off
    raw["augment"]["hflip"] = False
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return Params.model_validate(raw)


def test_space_keys_must_name_real_settings(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["tune"]["space"]["train"]["learning_rate"] = {"type": "uniform", "low": 0, "high": 1}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"tune\.space\.train\.learning_rate names no train"):
        load_params(path)


def test_dimension_bounds_are_checked(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["tune"]["space"]["train"]["lr"] = {"type": "loguniform", "low": 0, "high": 1}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="loguniform dimension needs low > 0"):
        load_params(path)


def test_search_space_and_trial_params() -> None:
    params = _params({})
    space = search_space(params.tune.flat_space())
    assert set(space) == {
        "train.lr",
        "augment.hflip",
        "augment.rotation",
        "augment.scale",
        "model.width",
    }
    sampled = trial_params(
        params.model_dump(mode="json"), {"train.lr": 0.002, "model.dropout": 0.1}
    )
    assert sampled.train.lr == 0.002 and sampled.model.dropout == 0.1
    assert sampled.train.max_epochs == params.tune.max_epochs
    assert sampled.train.accelerator == "cpu" and sampled.train.devices == 1


# each key the default space searches: a value the search may draw, and where a trial feels it
NEW_DIMENSIONS = {
    "augment.hflip": (True, lambda p: p.augment.hflip is True),
    "augment.rotation": (180, lambda p: p.augment.rotation == 180.0),
    "augment.scale": (0.25, lambda p: p.augment.scale == (0.75, 1.25)),
    "model.width": (16, lambda p: p.model.width == 16),
}


@pytest.mark.parametrize("key", sorted(NEW_DIMENSIONS))
def test_every_default_search_dimension_reaches_the_trial_and_the_final_training(
    key: str, tmp_path: Path
) -> None:
    """A value drawn for the key changes the trial's params, and best_params.yaml carries it
    into train's params; its choices are plain values Optuna can draw."""
    from ray import tune

    from tasks.core.overrides import read_best_params, write_best_params

    params = _params({})
    dimension = params.tune.flat_space()[key]
    assert dimension.type == "choice" and len(dimension.values) >= 2
    assert all(isinstance(value, bool | int | float | str) for value in dimension.values)
    value, holds = NEW_DIMENSIONS[key]
    assert value in dimension.values
    domain = search_space({key: dimension})[key]
    assert isinstance(domain, tune.search.sample.Categorical)
    assert sorted(domain.categories, key=str) == sorted(dimension.values, key=str)
    trial = trial_params(params.model_dump(mode="json"), {key: value})
    assert holds(trial) and not holds(params)

    best = tmp_path / "best_params.yaml"
    write_best_params(best, {key: value}, "test")
    from tasks.core.config import with_overrides

    assert holds(with_overrides(params, read_best_params(best)))


def test_a_search_over_flips_and_widths_builds_and_trains_each_choice() -> None:
    """Every capacity the default space can pick builds for the packed data and trains a step."""
    import torch

    from tasks.data.packed import PackedMeta
    from tasks.modeling.fit import make_module
    from tasks.tuning.budget import capacities

    params = _params({})
    combos = capacities(params, params.tune.flat_space())
    assert combos == [
        {"model.arch": "cnn", "model.width": 16},
        {"model.arch": "cnn", "model.width": 32},
    ]
    meta = PackedMeta.create(
        classes=["a", "b", "c"],
        image_size=16,
        channels=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        counts={"train": 3},
        near_duplicate_pairs_across_splits=0,
    )
    widths = []
    for combo in combos:
        trial = trial_params(params.model_dump(mode="json"), {**combo, "augment.hflip": True})
        module = make_module(trial, meta)
        images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
        scaled = module.augment(module.preprocessing.scale(images), torch.Generator())
        logits = module(module.preprocessing.normalize(scaled))
        assert logits.shape == (4, 3)
        widths.append(sum(p.numel() for p in module.network.parameters()))
    assert widths[1] > 2 * widths[0]  # width 32 is the bigger network


def test_tpe_never_trains_a_configuration_twice() -> None:
    """On a small `choice` space plain TPE repeats its best configuration once it exploits."""
    from ray import tune

    space = {name: tune.choice([0, 1, 2]) for name in ("a", "b")} | {"c": tune.choice([0, 1])}
    searcher = make_searcher("optuna", 14, 1, seed=3)
    assert isinstance(searcher.searcher, DistinctSuggestions)  # inside the concurrency limit
    searcher.set_search_properties("score", "max", space)
    suggested = []
    for index in range(14):
        config = searcher.suggest(f"trial_{index}")
        suggested.append(json.dumps(config, sort_keys=True))
        score = config["a"] + 0.1 * config["b"] + 0.01 * config["c"]
        searcher.on_trial_complete(f"trial_{index}", {"score": score})
    assert len(set(suggested)) == len(suggested) == 14
    # with every one of the 18 configurations tried, a repeat is trained rather than none
    for index in range(14, 19):
        assert searcher.suggest(f"trial_{index}") is not None
        searcher.on_trial_complete(f"trial_{index}", {"score": 0.0})


def test_the_search_is_checkpointed_and_restored_without_repeats(tmp_path: Path) -> None:
    """Tune saves the searcher with its wrappers after every step (and restores it to resume an
    interrupted search): each wrapper must hand over its state."""
    from ray import tune
    from ray.tune.search import SearchGenerator

    space = {"a": tune.choice([0, 1, 2]), "b": tune.choice([0, 1])}

    def searcher() -> object:
        fresh = make_searcher("optuna", 6, 1, seed=3)
        fresh.set_search_properties("score", "max", space)
        return fresh

    first, suggested = searcher(), []
    for index in range(3):
        config = first.suggest(f"trial_{index}")
        suggested.append(json.dumps(config, sort_keys=True))
        first.on_trial_complete(f"trial_{index}", {"score": config["a"] + 0.1 * config["b"]})
    SearchGenerator(first).save_to_dir(str(tmp_path), session_str="test")
    restored = searcher()
    SearchGenerator(restored).restore_from_dir(str(tmp_path))
    for index in range(3, 6):
        config = restored.suggest(f"trial_{index}")
        suggested.append(json.dumps(config, sort_keys=True))
        restored.on_trial_complete(f"trial_{index}", {"score": 0.0})
    assert len(set(suggested)) == len(suggested) == 6, suggested


def test_disabled_search_writes_the_params_values(repo: Path) -> None:
    write_params(repo, {"tune": {"enabled": False}})
    result = run(["python", "-m", "tasks.tune"], repo)
    assert "tune: disabled" in result.stdout
    best = yaml.safe_load((repo / "models" / "tune" / "best_params.yaml").read_text())
    params = load_params(repo / "params.yaml")
    assert best == {
        "train.lr": params.train.lr,
        "augment.hflip": params.augment.hflip,
        "augment.rotation": params.augment.rotation,
        "augment.scale": list(params.augment.scale),
        "model.width": params.model.width,
    }


def test_a_trial_counts_its_starts_in_its_folder(tmp_path: Path) -> None:
    assert attempts_made(tmp_path) == 0
    assert [count_attempt(tmp_path) for _ in range(3)] == [1, 2, 3]
    assert attempts_made(tmp_path) == 3


def test_the_last_line_counts_the_trials_that_failed_after_their_retries(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    summary = {
        "enabled": True,
        "trials": 8,
        "errored_trials": 1,
        "epochs_run": 30,
        "best_params": {"train.lr": 0.001},
        "best_val_acc": 0.98,
    }
    line = summary_line(summary, _params({"tune": {"max_failures": 2}}).tune, layout)
    assert line == (
        "tune: 8 trials (1 failed after 2 retries: see reports/tune/trials.csv), 30 epochs in "
        "all; best val_acc 0.9800 with {'train.lr': 0.001} -> models/tune/best_params.yaml"
    )
    once = summary_line(summary, _params({"tune": {"max_failures": 1}}).tune, layout)
    assert "(1 failed after 1 retry: see " in once
    clean = summary_line({**summary, "errored_trials": 0}, _params({}).tune, layout)
    assert clean.startswith("tune: 8 trials, 30 epochs in all; ")


def test_the_search_report_says_what_was_chosen_per_dimension_and_why(tmp_path: Path) -> None:
    from tasks.core.config import SearchDimension
    from tasks.tuning.reports import dimension_effects, plot_dimensions

    dimensions = {
        "train.lr": SearchDimension(type="loguniform", low=1e-4, high=1e-1),
        "augment.hflip": SearchDimension(type="choice", values=[False, True]),
        "model.width": SearchDimension(type="choice", values=[16, 32, 64]),
    }
    table = pd.DataFrame(
        {
            "config/train.lr": [0.001, 0.003, 0.01, 0.03],
            "config/augment.hflip": [False, True, False, True],
            "config/model.width": [16, 32, 64, 32],
            "best_val_acc": [0.90, 0.80, 0.95, np.nan],  # the last trial never reported
        }
    )
    effects = dimension_effects(table, dimensions, "val_acc", "max")
    assert effects["train.lr"]["chosen"] == 0.01
    assert effects["train.lr"]["range_tried"] == [0.001, 0.01]
    assert effects["train.lr"]["rank_correlation"] == 0.5
    assert effects["augment.hflip"]["chosen"] is False
    assert effects["augment.hflip"]["by_value"] == {
        "False": {"best": 0.95, "trials": 2},
        "True": {"best": 0.8, "trials": 1},
    }
    assert effects["model.width"]["by_value"]["64"] == {"best": 0.95, "trials": 1}
    assert dimension_effects(table, dimensions, "val_loss", "min") == {}  # no such scores
    # the search chose another trial (the cheapest of the equals): its values are the chosen ones
    chosen = dimension_effects(table, dimensions, "val_acc", "max", chosen_row=0)
    assert chosen["model.width"]["chosen"] == 16 and chosen["train.lr"]["chosen"] == 0.001

    plot_dimensions(table, dimensions, "val_acc", "max", tmp_path)
    assert (tmp_path / "dimensions.png").stat().st_size > 0
    plot_dimensions(table.iloc[0:0], {}, "val_acc", "max", tmp_path / "off")
    assert (tmp_path / "off" / "dimensions.png").stat().st_size > 0


def test_the_search_starts_from_the_params_values_and_the_strongest_augmentation() -> None:
    from tasks.tuning.searcher import anchor_points
    from tasks.tuning.space import searchable_value

    params = _params({})
    dimensions = params.tune.flat_space()
    current = {key: searchable_value(params, key) for key in dimensions}
    assert current["augment.scale"] == 0.1  # (0.9, 1.1) as the space writes it
    first, strongest = anchor_points(current, dimensions)
    assert first == current and first["augment.rotation"] == 12
    assert isinstance(first["augment.rotation"], int)  # the choice's own value, not 12.0
    assert strongest == {
        **current,
        "augment.hflip": True,
        "augment.rotation": 180,
        "augment.scale": 0.25,
    }
    # a params value the space cannot draw: no anchors (TPE starts as it would)
    assert anchor_points({**current, "model.width": 48}, dimensions) == []
    assert anchor_points({**current, "train.lr": 0.5}, dimensions) == []
    # TPE proposes them first, in order
    searcher = make_searcher("optuna", 8, 1, seed=0, first=[first, strongest])
    searcher.set_search_properties("val_acc", "max", search_space(dimensions))
    assert searcher.suggest("t1") == first
    searcher.on_trial_complete("t1", {"val_acc": 0.5})
    assert searcher.suggest("t2") == strongest


def test_the_last_line_says_when_the_hard_stop_ended_the_search(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    summary = {
        "enabled": True,
        "trials": 8,
        "errored_trials": 0,
        "epochs_run": 34,
        "best_val_acc": 0.99,
        "best_params": {"train.lr": 0.003},
        "budget": {"budget_minutes": 1.5, "stopped_by_budget": True},
    }
    settings = _params({}).tune
    line = summary_line(summary, settings, layout)
    assert line.startswith("tune: 8 trials (the search stopped at its hard limit, 2.25 min), ")
    summary["budget"]["stopped_by_budget"] = False
    assert summary_line(summary, settings, layout).startswith("tune: 8 trials, 34 epochs")
