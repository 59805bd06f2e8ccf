"""Matplotlib for files, never a screen: one place that picks the backend and saves a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (PNG files; works without a display).

    Imported on first use, so stages that draw nothing never pay matplotlib's import time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, dpi: int = 100) -> None:
    """Save `figure` to `path` (folders created) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)


def integer_ticks(axis: Any) -> None:
    """Ticks at whole numbers only on `axis` (an x or y axis): epochs, trials, counts."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))
