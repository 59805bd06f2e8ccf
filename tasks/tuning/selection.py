"""Which trial the search hands to train: the cheapest one that is as good as the best.

A search that scores trials on a validation split of a few hundred images cannot tell apart two
trials one image apart; picking the top score then can pick the dearer network (width 32 trains
at about twice the epoch time of width 16 on a CPU) for a difference that is noise, and `train`
pays that price for every epoch. The rule: among the trials whose validation accuracy is at
most one validation image below the best, take the one whose capacity trains fastest (the epoch
seconds the budget measured), the higher score on a tie. One image, not one binomial standard
error (Breiman's rule, 4-5 images on 126 validation images at 80 %): on a small hard data set
that would trade points of accuracy for time.

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
    tolerance: float | None  # one validation image (None: the best score wins)
    reason: str


def choose_trial(table: pd.DataFrame, metric: str, mode: str, val_images: int) -> Choice:
    """The trial `train` gets; `table` is trials.csv (best_<metric>, optional epoch_s)."""
    column = f"best_{metric}"
    scored = table.dropna(subset=[column])
    if scored.empty:
        raise ValueError("no trial has a score")
    best_index = int(scored[column].idxmax() if mode == "max" else scored[column].idxmin())
    best = float(scored.loc[best_index, column])
    if metric != "val_acc" or COST_COLUMN not in scored or scored[COST_COLUMN].isna().all():
        return Choice(best_index, best_index, None, f"the best {metric}")
    images = max(val_images, 1)
    tolerance = 1 / images
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
        f"the cheapest trial within one validation image (of {images}) of the best {metric} "
        f"{best:.4f}: {float(scored.loc[index, column]):.4f} at "
        f"{float(scored.loc[index, COST_COLUMN]):.1f} s per epoch instead of "
        f"{float(scored.loc[best_index, COST_COLUMN]):.1f}"
    )
    return Choice(index, best_index, tolerance, reason)
