"""How many times each trial has run, counted in the trial's own folder.

A trial runs again after a crash (`tune.max_failures`) and when an interrupted search is resumed;
the trainable counts every start (`count_attempt`), the trials table reads the count back
(`attempts_made`) for its `retries` column. A file in the trial's folder survives the worker
process that wrote it, which the metrics a trial reports do not when it dies before reporting.
"""

from __future__ import annotations

from pathlib import Path

ATTEMPTS_FILE = "attempts.txt"


def attempts_made(trial_dir: str | Path) -> int:
    """How many times the trial has started: 0 before its first run (or where its folder is on
    another machine)."""
    attempts_file = Path(trial_dir) / ATTEMPTS_FILE
    return int(attempts_file.read_text()) if attempts_file.exists() else 0


def count_attempt(trial_dir: str | Path) -> int:
    """Record one more start of the trial: 1 for its first run, 2 for its first retry, ..."""
    attempt = attempts_made(trial_dir) + 1
    (Path(trial_dir) / ATTEMPTS_FILE).write_text(str(attempt))
    return attempt
