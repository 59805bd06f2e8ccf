"""dvc.yaml's params for `tune` are exactly the keys that change the search's result.

A key a trial overrides (`train.max_epochs`, `train.patience`, the devices...) must not be a
dependency, or raising `train.max_epochs` would rerun the whole search; a key a trial trains with
must be one, or DVC would reuse a stale search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.config import AugmentConfig, Params, TrainConfig, TuneSettings
from tasks.tuning.space import trial_params

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]

# keys that reach the search another way, or change no result, with the reason
NOT_PARAMS = {
    "train.overfit_warn_gap": "only decides whether train warns",
    "augment.copies": "reaches tune through data/augmented, a file dependency",
    "tune.verbose": "only how much Ray prints",
    "tune.address": "where the trials run, not what they compute",
    "tune.max_failures": "how often a crashed trial is retried, not what it computes",
}

# a different valid value for each key (the changed value must pass the config's checks)
OTHER_VALUE: dict[str, Any] = {
    "lr": 0.01,
    "weight_decay": 0.01,
    "label_smoothing": 0.1,
    "batch_size": 32,
    "max_epochs": 50,
    "patience": 3,
    "schedule": "onecycle",
    "gradient_clip": None,
    "finetune_epochs": 1,
    "overfit_warn_gap": 0.2,
    "accelerator": "gpu",
    "devices": 2,
    "strategy": "ddp",
    "num_nodes": 2,
    "precision": "bf16-mixed",
    "cv_folds": 3,
}


def declared(stage: str) -> set[str]:
    return {str(key) for key in STAGES[stage]["params"]}


def covers(entries: set[str], key: str) -> bool:
    """True when `key` (dotted) is listed itself or through its whole section."""
    return key in entries or key.partition(".")[0] in entries


def trial_view(base: dict[str, Any]) -> dict[str, Any]:
    return trial_params(base, {}).model_dump(mode="json")


def train_key_problems(entries: set[str]) -> list[str]:
    """What is wrong with `entries` (a stage's params) as tune's view of the train section."""
    problems = []
    base = Params().model_dump(mode="json")
    for name in sorted(TrainConfig.model_fields):
        key = f"train.{name}"
        changed = Params().model_dump(mode="json")
        changed["train"][name] = OTHER_VALUE[name]
        if name == "finetune_epochs":
            changed["model"]["freeze_backbone"] = True
        Params.model_validate(changed)  # the other value must itself be valid
        reaches_trial = trial_view(base) != trial_view(changed)
        listed = covers(entries, key)
        if key in NOT_PARAMS and listed:
            problems.append(f"{key} is listed for tune, but {NOT_PARAMS[key]}")
        elif key not in NOT_PARAMS and reaches_trial and not listed:
            problems.append(f"a trial trains with {key}, so dvc.yaml's tune stage must list it")
        elif key not in NOT_PARAMS and not reaches_trial and listed:
            problems.append(f"a trial overrides {key}: listing it for tune reruns the search")
    return problems


def test_a_train_key_is_a_tune_param_exactly_when_a_trial_trains_with_it() -> None:
    assert train_key_problems(declared("tune")) == []


def test_the_rule_catches_both_mistakes() -> None:
    # the whole section, as dvc.yaml had it: max_epochs and the other overridden keys are flagged
    too_much = train_key_problems(declared("tune") | {"train"})
    assert any("overrides train.max_epochs" in problem for problem in too_much), too_much
    # a key a trial trains with, left out: a stale search would be reused
    too_little = train_key_problems(declared("tune") - {"train.lr"})
    assert too_little == ["a trial trains with train.lr, so dvc.yaml's tune stage must list it"], (
        too_little
    )


def test_tune_does_not_depend_on_the_whole_train_section() -> None:
    assert "train" not in declared("tune")
    for overridden in ("max_epochs", "patience", "devices", "accelerator", "strategy"):
        assert f"train.{overridden}" not in declared("tune")


@pytest.mark.parametrize(("section", "model"), [("tune", TuneSettings), ("augment", AugmentConfig)])
def test_every_other_tune_and_augment_key_is_listed_or_explained(section: str, model: Any) -> None:
    entries = declared("tune")
    for name in model.model_fields:
        key = f"{section}.{name}"
        if key in NOT_PARAMS:
            assert not covers(entries, key), f"{key}: {NOT_PARAMS[key]}"
        else:
            assert covers(entries, key), f"{key} is not a dependency of tune in dvc.yaml"
