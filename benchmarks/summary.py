"""The table of every benchmark's figures, targets and verdicts (what `make bench` prints last).

Run with ``python -m benchmarks.summary [name ...]`` after the benchmarks: reads
reports/bench/<name>.json (every benchmark module by default), prints one row per target and
writes the same table to reports/bench/summary.md. Exits 1 when a benchmark missed a target or
left no result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import BENCH_DIR, LAYOUT

NOT_BENCHMARKS = {"__init__", "common", "summary"}


def benchmark_names() -> list[str]:
    folder = Path(__file__).resolve().parent
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in NOT_BENCHMARKS)


def table(names: list[str]) -> tuple[list[str], bool]:
    """Markdown rows (benchmark, figure, value, target, verdict) and whether all met them."""
    rows = ["| benchmark | figure | value | target | verdict |", "|---|---|---|---|---|"]
    every_target_met = True
    for name in names:
        path = BENCH_DIR / f"{name}.json"
        if not path.exists():
            rows.append(f"| {name} | - | - | - | NO RESULT (the benchmark failed to run) |")
            every_target_met = False
            continue
        result = json.loads(path.read_text())
        checks = result.get("checks") or []
        if not checks:
            rows.append(f"| {name} | - | - | - | NO TARGET |")
            every_target_met = False
        for check in checks:
            verdict = "meets" if check["passed"] else "MISSES"
            target = f"{check['op']} {check['threshold']:.4g}"
            rows.append(
                f"| {name} | {check['figure']} | {check['value']:.4g} | {target} | {verdict} |"
            )
            every_target_met &= bool(check["passed"])
    return rows, every_target_met


def main() -> None:
    names = sys.argv[1:] or benchmark_names()
    rows, every_target_met = table(names)
    text = "\n".join(rows) + "\n"
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "summary.md").write_text(text)
    print(text, end="")
    verdict = "every target met" if every_target_met else "SOME TARGETS MISSED"
    print(f"benchmarks: {verdict} ({LAYOUT.relative(BENCH_DIR / 'summary.md')})")
    if not every_target_met:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
