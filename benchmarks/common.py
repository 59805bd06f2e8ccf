"""Shared helpers for benchmarks: timing, and writing reports/bench/<name>.json."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.io import write_json
from tasks.core.layout import Layout

LAYOUT = Layout.discover()  # the repository around the working directory: every path is in it
BENCH_DIR = LAYOUT.reports_dir / "bench"
VENV_BIN = Path(sys.executable).parent


def median_seconds(action: Callable[[], Any], repeats: int = 5) -> tuple[float, list[float]]:
    """Median wall time of `action` over `repeats` runs, and every run's time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def command(*arguments: str) -> Callable[[], subprocess.CompletedProcess[str]]:
    """A callable running a venv command in the repository root, failing loudly."""
    executable = VENV_BIN / arguments[0]
    argv = [str(executable) if executable.exists() else arguments[0], *arguments[1:]]
    return lambda: subprocess.run(argv, check=True, capture_output=True, text=True, cwd=LAYOUT.root)


def report(name: str, result: dict[str, Any]) -> None:
    path = BENCH_DIR / f"{name}.json"
    write_json(path, result)
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.items()
        if not isinstance(v, list | dict)
    )
    print(f"{name}: {shown} -> {LAYOUT.relative(path)}")
