"""One writer of the model registry at a time: an OS file lock on `models/registry`.

Three things read the registry, decide and write it back: the promote stage (the champion ->
the gate -> the new decision), continual learning (the champion -> minutes of fine-tuning -> the
decision, the bento, the new champion) and the package stage (the champion -> the bento). Each
holds :func:`registry_lock` for its read-decide-write, so a decision is always recorded against
the registry it was made on: continual learning re-reads the champion under the lock and does
not replace one it was never compared with (`tasks.continual.release`).

The lock is ``flock`` on ``models/registry/.lock`` (ignored by git through ``/models/*`` and by
DVC through ``.dvcignore``, so holding it changes no hash). The kernel releases it when its
holder dies, however it dies: a run killed with SIGKILL leaves the registry free, and what it
left half-written is garbage that ``python -m tasks.registry --verify`` names (`store`). While
held, the file names the holder (what, pid, host, since); a run that finds it held says so on
stderr after a moment and waits, up to `WAIT_S`, then stops with one line naming the holder and
exit 75 (try again later: a Prefect flow retries it). The lock is re-entrant within a process:
continual learning packages its challenger through the package stage's own function, which
takes the lock again.

This is a finer lock than the workspace lock (`flows/workspace.py`), which keeps two flows off
one checkout: the registry lock also orders a promote started by hand, or by `dvc repro`,
against a continual-learning run started by a flow.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tasks.core.errors import shown

LOCK_FILE = ".lock"  # in the registry folder; .dvcignore and .gitignore keep it out
# Continual learning holds the lock while it builds and serves its bento (a minute or two on a
# laptop); a promote waiting behind it should outwait that, not fail.
WAIT_S = 900.0
NOTICE_AFTER_S = 1.0  # a wait shorter than this is not worth a line
POLL_S = 0.1
UNKNOWN_HOLDER = "another run (it has not written its name yet)"


class RegistryBusy(TimeoutError):
    """The registry stayed locked longer than the caller would wait; the message names the
    holder. A TimeoutError, so a stage exits 75 (EX_TEMPFAIL) and a flow retries it."""


class _Held:
    """This process's hold on one registry: a thread lock for re-entry, the flock's descriptor."""

    def __init__(self) -> None:
        self.guard = threading.RLock()
        self.depth = 0
        self.descriptor: int | None = None


_HOLDS: dict[Path, _Held] = {}
_HOLDS_GUARD = threading.Lock()


def lock_path(registry_dir: Path) -> Path:
    return registry_dir / LOCK_FILE


def holder_line(purpose: str) -> str:
    """``promote (pid 4242 on host-a, since 2026-01-01 10:00:01 UTC)``."""
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{purpose} (pid {os.getpid()} on {socket.gethostname()}, since {since})"


def current_holder(descriptor: int) -> str:
    return os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or UNKNOWN_HOLDER


def _hold(registry_dir: Path) -> _Held:
    key = lock_path(registry_dir).resolve()
    with _HOLDS_GUARD:
        return _HOLDS.setdefault(key, _Held())


def _take_flock(registry_dir: Path, purpose: str, timeout: float) -> int:
    """The descriptor of the lock file, flocked; waits (saying so once) up to `timeout`."""
    path = lock_path(registry_dir)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
    started = time.monotonic()
    noticed = False
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waited = time.monotonic() - started
            if waited >= timeout:
                holder = current_holder(descriptor)
                os.close(descriptor)
                raise RegistryBusy(
                    f"{shown(registry_dir)} is locked by {holder}; {purpose} gave up after "
                    f"{waited:.0f} s and changed nothing: run it again when that run has finished"
                ) from None
            if not noticed and waited >= min(NOTICE_AFTER_S, timeout):
                print(
                    f"registry: {shown(registry_dir)} is locked by {current_holder(descriptor)}; "
                    f"{purpose} waits for it (up to {timeout:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                noticed = True
            time.sleep(POLL_S)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{holder_line(purpose)}\n".encode(), 0)
    except OSError:
        os.close(descriptor)  # closing gives the lock back: a failed write holds nothing
        raise
    return descriptor


@contextmanager
def registry_lock(registry_dir: Path, purpose: str, timeout: float = WAIT_S) -> Iterator[None]:
    """Hold the registry in `registry_dir` for `purpose` (``promote``, ``continual learning``).

    Blocks while another process holds it (one line on stderr after `NOTICE_AFTER_S`), and
    raises :class:`RegistryBusy` after `timeout` seconds. Re-entrant in one process; another
    thread of the same process waits as another process would (without a timeout: a thread
    that holds it is part of this run).
    """
    registry_dir.mkdir(parents=True, exist_ok=True)
    held = _hold(registry_dir)
    with held.guard:
        if held.depth == 0:
            held.descriptor = _take_flock(registry_dir, purpose, timeout)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.descriptor is not None:
                descriptor, held.descriptor = held.descriptor, None
                try:
                    os.ftruncate(descriptor, 0)
                finally:
                    os.close(descriptor)  # gives the lock back
