"""Shared helpers for benchmarks: timing, and writing reports/bench/<name>.json."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.io import write_json

BENCH_DIR = Path("reports/bench")
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
    """A callable running a venv command, failing loudly."""
    executable = VENV_BIN / arguments[0]
    argv = [str(executable) if executable.exists() else arguments[0], *arguments[1:]]
    return lambda: subprocess.run(argv, check=True, capture_output=True, text=True)


def report(name: str, result: dict[str, Any]) -> None:
    write_json(BENCH_DIR / f"{name}.json", result)
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.items()
        if not isinstance(v, list | dict)
    )
    print(f"{name}: {shown} -> {BENCH_DIR / name}.json")
