"""The search space in Ray Tune's terms, and the params one trial trains with."""

from __future__ import annotations

import math
from typing import Any

from tasks.core.config import Params, SearchDimension, with_overrides


def search_space(dimensions: dict[str, SearchDimension]) -> dict[str, Any]:
    """`tune.space` (dotted keys) as Ray Tune sampling domains."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in dimensions.items():
        if dim.type == "loguniform":
            space[key] = tune.loguniform(dim.low, dim.high)
        elif dim.type == "uniform":
            space[key] = tune.uniform(dim.low, dim.high)
        elif dim.type == "int":
            space[key] = tune.randint(int(dim.low), int(dim.high) + 1)
        else:
            space[key] = tune.choice(list(dim.values))
    return space


def trial_params(base: dict[str, Any], config: dict[str, Any]) -> Params:
    """The params a trial trains with: the base params, the trial's values, tune's budget."""
    params = with_overrides(Params.model_validate(base), config)
    tune = params.tune
    gpu = tune.gpus_per_trial > 0
    return with_overrides(
        params,
        {
            "train.max_epochs": tune.max_epochs,
            "train.patience": tune.max_epochs + 1,  # ASHA decides when a trial stops
            "train.accelerator": "gpu" if gpu else "cpu",
            "train.devices": 1,
            "train.strategy": "auto",
            "train.num_nodes": 1,
            "train.finetune_epochs": min(params.train.finetune_epochs, tune.max_epochs - 1),
        },
    )


def current_value(params: Params, key: str) -> Any:
    """The value of a dotted key (`train.lr`) in `params`."""
    section, _, name = key.partition(".")
    return getattr(getattr(params, section), name)


def searchable_value(params: Params, key: str) -> Any:
    """The value of `key` as the search space writes it: `augment.scale` (low, high) around 1
    as its one-number half range s (0.9, 1.1 -> 0.1); anything else as it is."""
    value = current_value(params, key)
    if (
        key == "augment.scale"
        and isinstance(value, tuple)
        and math.isclose(1 - value[0], value[1] - 1)
    ):
        return round(value[1] - 1, 6)
    return value
