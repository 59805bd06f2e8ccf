"""What a search leaves for people: the trials table and two plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.plotting import integer_ticks, pyplot, save_figure
from tasks.tuning.attempts import attempts_made


def trials_table(results: Any, metric: str, mode: str) -> pd.DataFrame:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        has_history = history is not None and metric in getattr(history, "columns", [])
        values = history[metric].dropna() if has_history else pd.Series(dtype=float)
        best = (values.max() if mode == "max" else values.min()) if len(values) else np.nan
        reported = int(history["attempt"].max()) if has_history and "attempt" in history else 1
        # the trial's own count also sees a last attempt that died before it reported
        attempts = max(reported, attempts_made(result.path) if result.path else 0)
        row = {f"config/{k}": v for k, v in (result.config or {}).items()}
        row |= {
            "trial_id": (result.metrics or {}).get("trial_id", ""),
            f"best_{metric}": best,
            f"last_{metric}": values.iloc[-1] if len(values) else np.nan,
            "epochs_run": len(values),
            "status": "error" if result.error else "finished",
            "retries": max(attempts - 1, 0),
            "time_s": float((result.metrics or {}).get("time_total_s", np.nan)),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def plot_trials(
    results: Any, table: pd.DataFrame, metric: str, mode: str, report_dir: Path
) -> None:
    """The metric per trial and epoch, and the best-so-far, as PNGs in `report_dir`."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for result in results:
        history = result.metrics_dataframe
        if history is not None and metric in getattr(history, "columns", []):
            axis.plot(range(1, len(history) + 1), history[metric], marker=".", alpha=0.8)
    axis.set(title=f"{metric} per trial (ASHA stops the weak ones)", xlabel="epoch", ylabel=metric)
    integer_ticks(axis.xaxis)  # epochs from 1, whole numbers
    figure.tight_layout()
    save_figure(figure, report_dir / "trials.png")

    ordered = table.dropna(subset=["time_s"]).sort_values("time_s")
    best_column = f"best_{metric}"
    running = (
        ordered[best_column].cummax() if mode == "max" else ordered[best_column].cummin()
    ).to_numpy()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.step(range(1, len(running) + 1), running, where="post")
    axis.set(title=f"best {metric} so far", xlabel="trials finished", ylabel=metric)
    integer_ticks(axis.xaxis)
    figure.tight_layout()
    save_figure(figure, report_dir / "best_so_far.png")


def _is_numeric(values: pd.Series) -> bool:
    return bool(len(values)) and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in values
    )


def dimension_effects(
    table: pd.DataFrame,
    dimensions: dict[str, Any],
    metric: str,
    mode: str,
    chosen_row: int | None = None,
) -> dict[str, dict[str, Any]]:
    """For each searched key: the chosen value and what the trials say about it.

    A choice dimension gets the best score reached with each value and how many trials tried it
    (a value no trial beat with is a value the search found worse); a numeric one gets the range
    tried and the rank correlation of the value with the score (ASHA stops weak trials early, so
    a score is the best of the epochs that trial was given). `chosen_row`: the table row the
    search chose (tasks/tuning/selection.py; default: the best score).
    """
    best_column = f"best_{metric}"
    scored = table.dropna(subset=[best_column]) if best_column in table else table.iloc[0:0]
    if scored.empty:
        return {}
    winner = _winner(scored, best_column, mode, chosen_row)
    effects: dict[str, dict[str, Any]] = {}
    for key, dimension in dimensions.items():
        column = f"config/{key}"
        if column not in scored:
            continue
        values = scored[column]
        chosen = values.loc[winner]
        effect: dict[str, Any] = {"type": dimension.type, "chosen": _plain(chosen)}
        if dimension.type == "choice" or not _is_numeric(values):
            groups = scored.groupby(values.map(repr))[best_column]
            best = groups.max() if mode == "max" else groups.min()
            effect["by_value"] = {
                text: {"best": round(float(best[text]), 4), "trials": int(groups.size()[text])}
                for text in sorted(best.index)
            }
        else:
            numbers = values.astype(float)
            effect["range_tried"] = [round(float(numbers.min()), 6), round(float(numbers.max()), 6)]
            if numbers.nunique() > 2:
                correlation = numbers.rank().corr(scored[best_column].rank())
                effect["rank_correlation"] = (
                    None if np.isnan(correlation) else round(correlation, 3)
                )
        effects[key] = effect
    return effects


def _winner(scored: pd.DataFrame, best_column: str, mode: str, chosen_row: int | None) -> Any:
    if chosen_row is not None and chosen_row in scored.index:
        return chosen_row
    return scored[best_column].idxmax() if mode == "max" else scored[best_column].idxmin()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def _choice_label(value: Any) -> str:
    """A choice's tick label: 12.0 and 12 both as "12", True as "True"."""
    return f"{float(value):g}" if _is_number(value) else str(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def plot_dimensions(
    table: pd.DataFrame,
    dimensions: dict[str, Any],
    metric: str,
    mode: str,
    report_dir: Path,
    chosen_row: int | None = None,
) -> None:
    """reports/tune/dimensions.png: each trial's best score against each searched value, the
    chosen trial ringed, so what the search chose and why can be seen at a glance."""
    plt = pyplot()
    best_column = f"best_{metric}"
    scored = table.dropna(subset=[best_column]) if best_column in table else table.iloc[0:0]
    keys = [k for k in dimensions if f"config/{k}" in scored] or ["(no search)"]
    columns = min(3, len(keys))
    rows = int(np.ceil(len(keys) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    if scored.empty:
        axes[0, 0].text(0.5, 0.5, "no trial: the search is off", ha="center", va="center")
        axes[0, 0].set_axis_off()
        figure.tight_layout()
        save_figure(figure, report_dir / "dimensions.png")
        return
    winner = _winner(scored, best_column, mode, chosen_row)
    scores = scored[best_column].to_numpy(dtype=float)
    for axis, key in zip(axes.flat, keys, strict=False):
        values = scored[f"config/{key}"]
        if dimensions[key].type == "choice" or not _is_numeric(values):
            # numbers in their order (12, 45, 180; not "12.0" < "180.0" < "45.0"), others as text
            named = values.map(_choice_label)
            numeric = all(_is_number(v) for v in values)
            order = sorted(set(values), key=float) if numeric else sorted(set(named))
            labels = list(dict.fromkeys(_choice_label(v) for v in order) if numeric else order)
            positions = named.map({label: i for i, label in enumerate(labels)})
            jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(values))
            x = positions.to_numpy(dtype=float) + jitter
            axis.set_xticks(range(len(labels)), labels, fontsize=7)
        else:
            x = values.to_numpy(dtype=float)
            if dimensions[key].type == "loguniform":
                axis.set_xscale("log")
                axis.xaxis.set_minor_formatter(plt.NullFormatter())  # no crowded minor labels
        axis.scatter(x, scores, s=18, alpha=0.8)
        chosen = scored.index.get_loc(winner)
        axis.scatter([x[chosen]], [scores[chosen]], s=90, facecolors="none", edgecolors="red")
        axis.set_title(key, fontsize=9)
        axis.set_ylabel(metric, fontsize=8)
    figure.suptitle(f"best {metric} of each trial against each searched value (red: chosen)")
    figure.tight_layout()
    save_figure(figure, report_dir / "dimensions.png")
