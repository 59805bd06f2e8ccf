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
