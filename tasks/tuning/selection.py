"""Which trial the search hands to train: the best, or the cheapest of near-equals.

By default (`tune.cheaper_within_images: 0`) the trial with the best validation score. With N
> 0: among the trials whose validation accuracy is at most N validation images below the best,
the one whose capacity trains fastest (the epoch seconds the budget measured), the higher score
on a tie. On a validation split of a few hundred images trials one image apart are equals, and
the cheaper network trains `train`'s every epoch faster; but the final model can pay for it: on
the digits, 1 chose width 16 over 32 (0.9926 vs 0.9963 on validation, one image) and the test
accuracy fell from 1.000 to 0.993. So it is a trade the user chooses, not the default.

Only for `tune.metric: val_acc`; with val_loss the best score wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

COST_COLUMN = "epoch_s"  # trials.csv: the measured seconds per epoch of the trial's capacity


@dataclass(frozen=True)
class Choice:
    index: int  # the chosen row of the trials table
    best_index: int  # the row with the best score
    tolerance: float | None  # the accuracy margin used (None: the best score wins)
    reason: str


def choose_trial(
    table: pd.DataFrame, metric: str, mode: str, val_images: int, within_images: int = 0
) -> Choice:
    """The trial `train` gets; `table` is trials.csv (best_<metric>, optional epoch_s)."""
    column = f"best_{metric}"
    scored = table.dropna(subset=[column])
    if scored.empty:
        raise ValueError("no trial has a score")
    best_index = int(scored[column].idxmax() if mode == "max" else scored[column].idxmin())
    best = float(scored.loc[best_index, column])
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
