"""The monitor's state between checks, and the rule that starts continual learning.

`reports/monitor/state.json` holds where the next check starts (`until`: the time of the newest
record the last verdict judged, and that check's `report`), the champion that verdict was
about, and `drift_in_a_row`: drift verdicts in a row since the last no-drift verdict. The rule,
with n = `monitor.consecutive`:

- a drift verdict counts one more; at n in a row continual learning is due (the report says
  `"continual": {"start": true}` and the flow starts it when told to), and the count is back
  to 0, so the next start needs n drift verdicts again;
- a no-drift verdict sets the count to 0;
- a check without a verdict (too few records) neither counts nor resets, and leaves the state
  alone, so its records are judged with the next ones;
- a verdict about another champion than the state's (continual learning or the pipeline
  promoted a new one) starts the count afresh: drift of the old model is not drift of the new.

One false alarm per check at most `monitor.false_alarm_rate` (the drift verdict); n in a row on
clean traffic is far rarer (about that rate to the power n when checks see different records).

Written atomically (`tasks.core.io.write_json`: a temporary file renamed over the old), and read,
decided and written under an OS file lock (``flock`` on `reports/monitor/.state.lock`), so two
checks at once never both count the same verdict, and a kill leaves the old state or the new.
Light (no numpy, no torch): the Prefect flow reads only the report.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.core.io import read_json, write_json

MONITOR_FOLDER = "monitor"  # under reports/
STATE_FILE = "state.json"
LOCK_FILE = ".state.lock"


@dataclass(frozen=True)
class MonitorState:
    until: str | None = None  # ISO time of the newest record the last verdict judged
    report: str | None = None  # that check's report (file name)
    champion: str | None = None  # the model that verdict was about
    drift_in_a_row: int = 0


@dataclass(frozen=True)
class ContinualDecision:
    """What a verdict means for continual learning (the report's ``"continual"``)."""

    drift_in_a_row: int  # counting this check's verdict
    needed: int  # monitor.consecutive
    start: bool  # continual learning is due now
    message: str  # one line for a person

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def state_path(reports_dir: Path) -> Path:
    return reports_dir / MONITOR_FOLDER / STATE_FILE


def read_state(reports_dir: Path) -> MonitorState:
    """The state; the empty one before the first verdict (older files lack the newer fields)."""
    path = state_path(reports_dir)
    if not path.exists():
        return MonitorState()
    stored = read_json(path)
    known = {key: stored[key] for key in MonitorState.__dataclass_fields__ if key in stored}
    return MonitorState(**known)


def write_state(reports_dir: Path, state: MonitorState) -> None:
    write_json(state_path(reports_dir), asdict(state))


@contextmanager
def state_lock(reports_dir: Path) -> Iterator[None]:
    """Hold the monitor's state lock (waits for another check to finish with it)."""
    folder = reports_dir / MONITOR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the flock


def decide_continual(
    state: MonitorState, drift: bool | None, champion: str, needed: int
) -> tuple[int, ContinualDecision]:
    """The count to store and what this verdict means for continual learning (module
    docstring): `drift` True, False or None (no verdict)."""
    before = state.drift_in_a_row if state.champion in (None, champion) else 0
    if drift is None:
        message = f"no verdict: drift {before} of {needed} in a row, unchanged"
        return before, ContinualDecision(before, needed, False, message)
    if not drift:
        message = f"no drift: drift 0 of {needed} in a row"
        return 0, ContinualDecision(0, needed, False, message)
    count = before + 1
    if count >= needed:
        message = f"drift {count} of {needed} in a row: continual learning is due"
        return 0, ContinualDecision(count, needed, True, message)
    message = f"drift {count} of {needed} in a row: continual learning not started yet"
    return count, ContinualDecision(count, needed, False, message)
