"""Which trial the search hands to train: the best, or the cheapest of near-equals.

By default (`tune.cheaper_within_images: 0`) the trial with the best validation score. With N
> 0: among the trials whose validation accuracy is at most N validation images below the best,
the one whose capacity trains fastest (the epoch seconds the budget measured), the higher score
on a tie. On a validation split of a few hundred images trials one image apart are equals, and
the cheaper network trains `train`'s every epoch faster; but the final model can pay for it: on
the digits, 1 chose width 16 over 32 (0.9926 vs 0.9963 on validation, one image) and the test
accuracy fell from 1.000 to 0.993. So it is a trade the user chooses, not the default.

The user's configuration is kept on noise (`tune.keep_params_within_se`, 1 by default): when the
params.yaml configuration (the search's first trial, trained to the end) is within that many
standard errors of the best trial's validation accuracy, `train` gets it. This is the
one-standard-error rule of model selection (Breiman et al. 1984; Hastie, Tibshirani & Friedman,
ESL 7.10) with the user's configuration as the default model: on a validation split of a
hundred-odd images trials a few images apart are equals, and the search's short, early-stopped
trials rank slow starters badly. The standard error is the best accuracy's, with Agresti-Coull's
+2/+4 so that 100 % still has one (digits, 270 validation images: 0.005, 1.4 images; the photo
set, 126 images at 0.75: 0.038, 4.8 images). 0 turns it off.

Only for `tune.metric: val_acc`; with val_loss the best score wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

COST_COLUMN = "epoch_s"  # trials.csv: the measured seconds per epoch of the trial's capacity


@dataclass(frozen=True)
class Choice:
    index: int  # the chosen row of the trials table
    best_index: int  # the row with the best score
    tolerance: float | None  # the accuracy margin used (None: the best score wins)
    reason: str


def accuracy_standard_error(accuracy: float, images: int) -> float:
    """The standard error of an accuracy on `images` images (Agresti-Coull: never 0)."""
    adjusted = (accuracy * images + 2) / (images + 4)
    return math.sqrt(adjusted * (1 - adjusted) / (images + 4))


def choose_trial(
    table: pd.DataFrame,
    metric: str,
    mode: str,
    val_images: int,
    within_images: int = 0,
    params_row: int | None = None,
    keep_within_se: float = 0.0,
) -> Choice:
    """The trial `train` gets; `table` is trials.csv (best_<metric>, optional epoch_s).

    `params_row`: the row of the params.yaml configuration (the first anchor), if it ran; it is
    kept when within `keep_within_se` standard errors of the best val_acc."""
    column = f"best_{metric}"
    scored = table.dropna(subset=[column])
    if scored.empty:
        raise ValueError("no trial has a score")
    best_index = int(scored[column].idxmax() if mode == "max" else scored[column].idxmin())
    best = float(scored.loc[best_index, column])
    kept = _keep_params(
        scored, column, metric, best, best_index, val_images, params_row, keep_within_se
    )
    if kept is not None:
        return kept
    no_costs = COST_COLUMN not in scored or scored[COST_COLUMN].isna().all()
    if metric != "val_acc" or no_costs or within_images <= 0:
        return Choice(best_index, best_index, None, f"the best {metric}")
    images = max(val_images, 1)
    tolerance = within_images / images
    # scores are float32 fractions of the validation images: compare with a margin of their
    # rounding, so a trial exactly one image below the best counts as within one image
    close = scored[scored[column] >= best - tolerance - 1e-6]
    ordered = close.assign(_order=range(len(close))).sort_values(
        [COST_COLUMN, column, "_order"], ascending=[True, False, True]
    )
    index = int(ordered.index[0])
    if index == best_index or scored.loc[index, COST_COLUMN] >= scored.loc[best_index, COST_COLUMN]:
        return Choice(best_index, best_index, tolerance, f"the best {metric}")
    reason = (
        f"the cheapest trial within {within_images} validation image(s) (of {images}) of the "
        f"best {metric} {best:.4f}: {float(scored.loc[index, column]):.4f} at "
        f"{float(scored.loc[index, COST_COLUMN]):.1f} s per epoch instead of "
        f"{float(scored.loc[best_index, COST_COLUMN]):.1f}"
    )
    return Choice(index, best_index, tolerance, reason)


def _keep_params(
    scored: pd.DataFrame,
    column: str,
    metric: str,
    best: float,
    best_index: int,
    val_images: int,
    params_row: int | None,
    within_se: float,
) -> Choice | None:
    """The params.yaml configuration's row when it is within `within_se` standard errors of the
    best val_acc (and is not the best itself), else None."""
    if metric != "val_acc" or within_se <= 0 or params_row is None or params_row == best_index:
        return None
    if params_row not in scored.index:
        return None
    images = max(val_images, 1)
    margin = within_se * accuracy_standard_error(best, images)
    own = float(scored.loc[params_row, column])
    if own < best - margin - 1e-6:  # float32 scores: a margin of their rounding
        return None
    reason = (
        f"the params.yaml configuration: its {metric} {own:.4f} is within {within_se:g} "
        f"standard error(s) ({margin:.4f}, {margin * images:.1f} of {images} validation images) "
        f"of the best trial's {best:.4f}, too close to call; the search replaces it only when a "
        "trial beats it by more (tune.keep_params_within_se)"
    )
    return Choice(params_row, best_index, margin, reason)
