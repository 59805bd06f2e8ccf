"""Shared helpers for benchmarks: timing, targets with verdicts, and reports/bench/<name>.json.

Every benchmark ends with :func:`finish`: its checks (a measured figure against a target) go
into the JSON beside the figures (`target`, `meets_target`, `checks`), a verdict line is printed,
and the process exits 1 when any target is missed, so `make bench` fails with it.

``python -m benchmarks.<name> --impossible-target`` replaces every target by one no measurement
can meet (for checking that a missed target really fails the run: `make bench-selftest`).
"""

from __future__ import annotations

import math
import operator
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import shown_values
from tasks.core.io import write_json
from tasks.core.layout import Layout

LAYOUT = Layout.discover()  # the repository around the working directory: every path is in it
BENCH_DIR = LAYOUT.reports_dir / "bench"
VENV_BIN = Path(sys.executable).parent
IMPOSSIBLE_FLAG = "--impossible-target"
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Check:
    """One target: `figure` (its name) `op` `threshold`, and the measured `value`."""

    figure: str
    value: float
    op: str
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(_COMPARE[self.op](self.value, self.threshold))

    def target(self) -> str:
        return f"{self.figure} {self.op} {self.threshold:.4g}"

    def impossible(self) -> Check:
        """The same check with a threshold no value meets."""
        threshold = math.inf if self.op in (">=", ">") else -math.inf
        return Check(self.figure, self.value, self.op, threshold)


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


def impossible_requested(argv: list[str] | None = None) -> bool:
    return IMPOSSIBLE_FLAG in (sys.argv[1:] if argv is None else argv)


def finish(
    name: str, result: dict[str, Any], checks: list[Check], argv: list[str] | None = None
) -> bool:
    """Write reports/bench/<name>.json with the figures and the verdict; print both; exit 1 when
    a target is missed. Returns True (for callers that catch SystemExit, e.g. tests)."""
    if impossible_requested(argv):
        checks = [check.impossible() for check in checks]
    meets = all(check.passed for check in checks)
    payload = {
        **result,
        "target": "; ".join(check.target() for check in checks),
        "meets_target": meets,
        "checks": [{**asdict(check), "passed": check.passed} for check in checks],
    }
    # a self-test's verdict must not replace the real result that `make bench` summarizes
    suffix = ".impossible-target" if impossible_requested(argv) else ""
    path = BENCH_DIR / f"{name}{suffix}.json"
    write_json(path, payload)
    scalars = {k: v for k, v in result.items() if not isinstance(v, list | dict)}
    print(f"{name}: {shown_values(scalars)} -> {LAYOUT.relative(path)}")
    for check in checks:
        verdict = "meets" if check.passed else "MISSES"
        print(f"{name}: {check.figure} = {check.value:.4g} {verdict} the target {check.target()}")
    if not meets:
        raise SystemExit(1)
    return True
