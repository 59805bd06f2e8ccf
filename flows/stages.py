"""Run DVC and sixfold's steps as child processes: their output streamed as it comes, their
outcome and exit code read from DVC's own lines.

Shared by the Prefect flow (`flows/pipeline.py`) and `make run` (`flows/repro.py`). DVC exits 255
whatever a stage's exit code was and says the code only in its last line
(``ERROR: failed to reproduce 'train': failed to run: python -m tasks.train, exited with 2``), and
reports a stage it restored from its run cache differently from one that was up to date; both
are read here, in one place. Torch-free: this module runs stages, it does not train.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from tasks.core.runner import EX_CONFIG, EX_INTERRUPTED, EX_TEMPFAIL, EX_USER  # torch-free

# What each exit code of a stage means (tasks/core/runner.py sets them), for a user's last line.
EXIT_MEANINGS = {
    EX_USER: "a mistake in the data or files",
    EX_CONFIG: "a mistake in params.yaml",
    EX_TEMPFAIL: "a transient error (network, timeout): try again",
    EX_INTERRUPTED: "interrupted by Ctrl-C: run it again to resume",
    128 + 15: "stopped by SIGTERM: run it again to resume",
    128 + 9: "killed (SIGKILL, perhaps out of memory): run it again to resume",
}

_STAGE_FAILED = re.compile(r"failed to reproduce '([^']+)': failed to run: .*, exited with (-?\d+)")
_LOCK_HELD = "Unable to acquire lock"

# DVC's advice after every `dvc repro` that changed something: once per run is what `dvc repro`
# prints; once per stage (the flow runs one `dvc repro` per stage) it is noise.
_DVC_ADVICE = (
    "To track the changes with git, run:",
    "To enable auto staging, run:",
    "Use `dvc push` to send your updates to remote storage.",
)


@dataclass(frozen=True)
class StageFailure:
    """A step that failed: which one and the exit code it failed with."""

    stage: str
    exit_code: int
    label: str | None = None  # how to name a step that is not a DVC stage ("the params.yaml check")

    @property
    def transient(self) -> bool:
        """True when a retry may succeed (the stage said so, or DVC's lock was held)."""
        return self.exit_code == EX_TEMPFAIL

    def describe(self) -> str:
        """``stage 'train' failed with exit 2 (a mistake in params.yaml)``."""
        meaning = EXIT_MEANINGS.get(self.exit_code)
        suffix = f" ({meaning})" if meaning else ""
        name = self.label or f"stage {self.stage!r}"
        return f"{name} failed with exit {self.exit_code}{suffix}"


def failure_from_output(
    stage: str, exit_code: int, lines: Iterable[str], label: str | None = None
) -> StageFailure:
    """The failure of `stage`, whose command exited `exit_code` after printing `lines`: the
    stage's own exit code when DVC ran it, exit 75 when DVC's lock was held, else DVC's code."""
    for line in lines:
        match = _STAGE_FAILED.search(line)
        if match:
            code = int(match.group(2))  # DVC says -N for a stage killed by signal N
            return StageFailure(match.group(1), 128 - code if code < 0 else code)
        if _LOCK_HELD in line:
            return StageFailure(stage, EX_TEMPFAIL, label)
    return StageFailure(stage, exit_code, label)


def is_dvc_failure_line(line: str) -> bool:
    """DVC's ``failed to reproduce ... exited with N`` line, which repeats what the stage said."""
    return _STAGE_FAILED.search(line) is not None


def stage_outcome(stage: str, lines: Iterable[str]) -> str:
    """What DVC did with `stage`: 'ran', 'restored from cache' or 'skipped (up to date)'.

    DVC 3 says ``Running stage 'x':`` (dvc/stage/run.py), ``Stage 'x' is cached - skipping run,
    checking out outputs`` (its run cache, dvc/stage/cache.py) or ``Stage 'x' didn't change,
    skipping`` (dvc/stage/__init__.py).
    """
    text = "\n".join(lines)
    if f"Running stage '{stage}'" in text:
        return "ran"
    if f"Stage '{stage}' is cached" in text:
        return "restored from cache"
    return "skipped (up to date)"


def is_dvc_advice(line: str) -> bool:
    """A line of DVC's "git add dvc.lock / dvc push" advice (blank lines around it included)."""
    stripped = line.strip()
    return (
        not stripped
        or stripped in _DVC_ADVICE
        or stripped.startswith("git add ")
        or stripped == "dvc config core.autostage true"
    )


class DvcOutput:
    """What a command's lines must be remembered for: DVC's own lines (``Running stage``,
    ``Stage '...' is cached``, ``ERROR: ...``), however long the stage's output between them."""

    _MARKERS = ("Running stage '", "Stage '", "ERROR: ")

    def __init__(self) -> None:
        self.lines: list[str] = []

    def record(self, line: str) -> None:
        if line.startswith(self._MARKERS):
            self.lines.append(line)


class LineSplitter:
    """Cuts a byte stream into lines at ``\\n`` and into progress updates at ``\\r``.

    A tqdm bar redraws itself with ``\\r`` many times a second and ends with ``\\n``; each piece
    comes out as ``(text, is_progress)``, so a caller can pass updates through (a terminal) or
    thin them out (a log).
    """

    _BREAK = re.compile(r"\r\n|\n|\r")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> list[tuple[str, bool]]:
        """The complete pieces in `data` (and, with `final`, whatever is left)."""
        text = self._pending + self._decoder.decode(data, final)
        pieces: list[tuple[str, bool]] = []
        start = 0
        for match in self._BREAK.finditer(text):
            if match.group() == "\r" and match.end() == len(text) and not final:
                break  # perhaps the first half of a \r\n: wait for the next chunk
            pieces.append((text[start : match.start()], match.group() == "\r"))
            start = match.end()
        self._pending = text[start:]
        if final and self._pending:
            pieces.append((self._pending, False))
            self._pending = ""
        return pieces


class ProgressThrottle:
    """Lets through every line, and at most one progress update every `interval` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def keep(self, text: str, is_progress: bool) -> bool:
        """True when the piece should be shown."""
        if not is_progress:
            return True
        now = self._clock()
        if not text.strip() or (self._last is not None and now - self._last < self.interval):
            return False
        self._last = now
        return True


def child_environment() -> dict[str, str]:
    """The environment for a child: unbuffered Python, so its lines arrive as it prints them."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@contextmanager
def _ctrl_c_counted(on_second: Callable[[], object]) -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) raises nothing here: a KeyboardInterrupt between `os.read`
    returning and its bytes being used would lose them. The first is left to the child (Ctrl-C
    reaches the whole foreground process group); a second calls `on_second`. Only the main
    thread can set a handler (a Prefect task runs in a worker thread: SIGINT never lands there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def count_it(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        if count > 1:
            on_second()

    previous = signal.signal(signal.SIGINT, count_it)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stream(command: list[str], cwd: str | Path, on_piece: Callable[[str, bool], None]) -> int:
    """Run `command` in `cwd`, stdout and stderr together, calling `on_piece(text, is_progress)`
    for each line or progress update as it arrives; returns the exit code.

    Ctrl-C reaches the child too (one foreground process group): the first one is not ours to
    act on, so reading goes on until the child ends and its last lines (train's `interrupted
    ... resume` line) are shown; a second one stops the child (SIGTERM)."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_environment()
    )
    assert process.stdout is not None
    splitter = LineSplitter()
    with _ctrl_c_counted(process.terminate), process.stdout:
        descriptor = process.stdout.fileno()
        while chunk := os.read(descriptor, 65536):  # returns what is there, without waiting to fill
            for text, is_progress in splitter.feed(chunk):
                on_piece(text, is_progress)
        for text, is_progress in splitter.feed(b"", final=True):
            on_piece(text, is_progress)
        return process.wait()


def dvc_command(*arguments: str) -> list[str]:
    """``dvc <arguments>``, with the dvc of this interpreter's environment when there is one."""
    executable = Path(sys.executable).with_name("dvc")
    return [str(executable) if executable.exists() else "dvc", *arguments]


def python_command(*arguments: str) -> list[str]:
    """``python <arguments>`` with this interpreter."""
    return [sys.executable, *arguments]


def is_transient_state(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry only a step whose failure says a retry may succeed."""
    failure = state.result(raise_on_failure=False)
    return isinstance(failure, StageFailure) and failure.transient


# The retries of every step that runs a command: twice, 5 s then 10 s later, transient ones only.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_condition_fn": is_transient_state,
}


def run_in_child(command: list[str], repo_root: str, step: str, label: str) -> State | None:
    """Run `command` in `repo_root` from a Prefect task, its lines (progress bars left out) in
    the run's log; None on success, else the Failed state to return (its data the
    :class:`StageFailure`; no traceback: the child's own ``error: ...`` line is in the log)."""
    logger = get_run_logger()

    def forward(text: str, is_progress: bool) -> None:
        if text.strip() and not is_progress:
            level = logging.ERROR if text.lower().startswith("error") else logging.INFO
            logger.log(level, "%s", text.rstrip())

    exit_code = stream(command, repo_root, forward)
    if exit_code == 0:
        return None
    failure = StageFailure(step, exit_code, label)
    return Failed(message=failure.describe(), data=failure)


def reported_failure(state: State, flow: str) -> State:
    """The Failed state a flow returns for a failed step: its :class:`StageFailure` named in one
    ``<flow>: ...; its error is above`` line (no traceback). A failure that is not a
    StageFailure is a bug in the task itself: its state is returned as it is, traceback kept."""
    failure = state.result(raise_on_failure=False)
    if not isinstance(failure, StageFailure):
        return state
    print(f"{flow}: {failure.describe()}; its error is above")
    return Failed(message=failure.describe(), data=failure)


def exit_like(state: State) -> None:
    """End a flow's command line as its final state says: a step's failure exits with the
    step's code; any other failure raises with its traceback; success returns."""
    failure = state.result(raise_on_failure=False)
    if isinstance(failure, StageFailure):
        raise SystemExit(failure.exit_code)
    if state.is_failed():
        state.result()  # a bug: raise it with its traceback
