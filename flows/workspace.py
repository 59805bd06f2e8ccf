"""One run at a time writes a workspace: the lock every flow that writes it takes first.

The training pipeline (data, models, the registry, dvc.lock), continual learning (a data
version, the registry, the bento) and the drift monitor (its state and reports) all write the
same checkout. The rule, the same for the three and for a run started by hand, by a schedule or
by another flow: **a run that finds the workspace held fails at once**, before it touches
anything, with one line naming the run that holds it, and exit code 75 (EX_TEMPFAIL: try again
later). Nothing waits in a queue: a schedule fires again, and a queued run would start on a
workspace that the first run has just changed under it.

The lock is an OS file lock (``flock``) on ``.sixfold/workspace.lock`` at the repository root,
not a Prefect concurrency limit: the kernel releases it when its holder dies, however it dies
(a killed worker leaves no slot behind), it works without a Prefect server, and the workspace
is a folder on one machine, which is what a file lock guards. While held, the file names the
holder (flow, flow run, process, host, start time), which the refused run prints. The
deployments in prefect.yaml have no concurrency limit of their own, so this is the one rule.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from prefect.context import FlowRunContext
from prefect.states import Failed, State

from flows.stages import StageFailure
from tasks.core.layout import Layout
from tasks.core.runner import EX_TEMPFAIL

LOCK_FILE = Path(".sixfold") / "workspace.lock"  # under the repository root; git-ignored
UNKNOWN_HOLDER = "another run (it has not written its name yet)"

Result = TypeVar("Result")


class WorkspaceBusy(RuntimeError):
    """The workspace is held by another run; the message names it."""

    def __init__(self, root: Path, holder: str) -> None:
        super().__init__(f"the workspace {root} is held by {holder}")
        self.root = root
        self.holder = holder


def lock_path(root: Path) -> Path:
    """The lock file of the workspace around `root` (a run started in a subfolder of the
    repository locks the same workspace as one started at its root)."""
    return Layout.discover(Path(root)).root / LOCK_FILE


def describe_holder(flow: str) -> str:
    """Who holds the workspace, as a refused run prints it: ``training-pipeline (flow run
    'crimson-fox' 5b1c..., pid 4242 on host-a, since 2025-06-01 10:00:01 UTC)``."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    named = f"flow run {run.name!r} {run.id}, " if run is not None else ""
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{flow} ({named}pid {os.getpid()} on {socket.gethostname()}, since {since})"


class WorkspaceLock:
    """A held workspace: :meth:`acquire` takes it, leaving the ``with`` block gives it back."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, root: Path, holder: str) -> WorkspaceLock:
        """Hold the workspace at `root`, its file naming `holder` meanwhile.

        Raises :class:`WorkspaceBusy` at once (no waiting) when another process, or another
        holder in this one, has it. The lock goes with the process: a run killed with SIGKILL
        leaves the workspace free (its stale name stays in the file until the next holder's).
        """
        path = lock_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            named = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise WorkspaceBusy(path.parent.parent, named or UNKNOWN_HOLDER) from None
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{holder}\n".encode(), 0)
        except OSError:
            os.close(descriptor)  # closing gives the lock back: a failed write holds nothing
            raise
        return cls(descriptor)

    def release(self) -> None:
        """Give the workspace back (closing the descriptor releases the lock); idempotent."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            try:
                os.ftruncate(descriptor, 0)
            finally:
                os.close(descriptor)

    def __enter__(self) -> WorkspaceLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def refusal(busy: WorkspaceBusy, refused: str) -> str:
    """The one line a refused run prints (after ``error: ``): who holds the workspace, and that
    `refused` (``this drift-monitor run``, ``make run``) did nothing."""
    return f"{busy}; {refused} did nothing: try again when that run has finished"


def holding_workspace(root: str | Path, flow: str, work: Callable[[], Result]) -> Result | State:
    """Run `work` holding the workspace at `root` on behalf of `flow` (a flow's name).

    The one place the rule is applied (the three flows call it): when another run holds the
    workspace, print one ``error:`` line naming it and return a Failed state whose data is a
    :class:`StageFailure` with exit 75, without calling `work`."""
    try:
        lock = WorkspaceLock.acquire(Path(root), describe_holder(flow))
    except WorkspaceBusy as busy:
        message = refusal(busy, f"this {flow} run")
        print(f"error: {message}")
        return Failed(message=message, data=StageFailure(flow, EX_TEMPFAIL, "the workspace lock"))
    with lock:
        return work()
