"""ASHA that lets the user's own configuration train to the end.

ASHA compares trials at its rungs (2, 6, ... epochs) and stops the weaker ones. On a small
validation split those early comparisons are noisy, and configurations that start slowly (strong
augmentation, a low learning rate) lose them whatever they would reach: on the photo set the
params.yaml anchor was stopped at epoch 2 in one run and won in the next. The params.yaml
configuration is what `train` falls back to when nothing beats it clearly
(`tasks.tuning.selection`), so it must be measured like the best: :class:`KeepAnchorASHA` never
stops it before `max_t` (every other trial is treated exactly as ASHA treats it).
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler


def same_config(config: dict[str, Any], anchor: dict[str, Any]) -> bool:
    """`config` has `anchor`'s value for each of its keys (floats up to rounding)."""
    for key, value in anchor.items():
        other = config.get(key)
        both_numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (value, other)
        )
        if both_numbers:
            if not math.isclose(float(other), float(value), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif other != value:
            return False
    return True


class KeepAnchorASHA(ASHAScheduler):
    """ASHA, except that the trial of `anchor`'s configuration runs to `max_t`."""

    def __init__(self, anchor: dict[str, Any] | None, **asha: Any) -> None:
        super().__init__(**asha)
        self.anchor = anchor

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if (
            decision == TrialScheduler.STOP
            and self.anchor
            and same_config(trial.config, self.anchor)
            and result.get(self._time_attr, 0) < self._max_t
        ):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return decision


def make_scheduler(
    settings: Any, max_epochs: int, anchor: dict[str, Any] | None, cv_folds: int
) -> Any:
    """The search's scheduler from `tune.*`: ASHA keeping `anchor` (the params.yaml
    configuration) to the end when `tune.keep_params_within_se` lets train keep it, or FIFO
    (`tune.scheduler: none`, or cross-validated trials, whose fold means cannot be compared
    epoch by epoch)."""
    from ray.tune.schedulers import FIFOScheduler

    if settings.scheduler != "asha" or cv_folds > 1:
        return FIFOScheduler()
    return KeepAnchorASHA(
        anchor if settings.keep_params_within_se > 0 else None,  # only when train may keep it
        max_t=max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def anchor_row(configs: list[dict[str, Any]], anchor: dict[str, Any] | None) -> int | None:
    """The index of the first config that is `anchor`'s, or None."""
    if not anchor:
        return None
    return next((i for i, config in enumerate(configs) if same_config(config, anchor)), None)
