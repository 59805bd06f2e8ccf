"""Run the Prefect process worker of ``make deploy`` as a child, and stop it within 30 seconds.

Why not ``prefect worker start`` in the foreground, as `make deploy` did: Prefect 3.8.8's worker
turns SIGTERM into a SIGINT to itself. Where SIGINT is ignored (a worker started in the
background by a non-interactive shell, by nohup, by some supervisors: the ignore survives exec)
it ignores both, and the next signal SIGKILLs it, leaving the run in progress Running on the
server and its processes orphaned. Where SIGINT is not ignored it stops within seconds, but its
run in progress still shows Running on the server, forever.

Here the worker runs in its own session (so a Ctrl-C in the terminal reaches this process only)
and a SIGTERM or SIGINT to this process stops everything in an order that leaves each run in a
final state:

1. every process of every flow run the worker started (found by the ``PREFECT__FLOW_RUN_ID`` in
   its environment: Prefect's engine, dvc, the stage) gets SIGTERM: a stage saves what it must
   and exits (train: its checkpoint, "run it again to resume"), and the engine reports the run
   Crashed ("Execution was aborted by a termination signal"); SIGKILL after `GRACE_S`;
2. the worker gets SIGTERM (with no run left it stops within a second or two), SIGKILL after
   `GRACE_S`;
3. a run that is still not in a final state on the server is set Crashed, naming the stop.

A second signal skips what is left of the grace periods. A worker that exits by itself is
followed by steps 1 and 3 for the runs it leaves behind, and its exit code is returned.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from uuid import UUID

import httpx
import psutil
from prefect.exceptions import PrefectException

GRACE_S = 10.0  # per step (the runs' processes, then the worker): 20 s in all, under 30
POLL_S = 0.5  # how often the worker's flow runs are looked up while it runs
FLOW_RUN_VARIABLE = "PREFECT__FLOW_RUN_ID"  # set by the worker in each flow run's environment


def flow_run_processes(worker: psutil.Process) -> dict[str, list[psutil.Process]]:
    """The worker's descendants by the flow run they execute ({flow run id: processes})."""
    try:
        descendants = worker.children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    runs: dict[str, list[psutil.Process]] = {}
    for process in descendants:
        try:
            run_id = process.environ().get(FLOW_RUN_VARIABLE)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if run_id:
            runs.setdefault(run_id, []).append(process)
    return runs


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's zombie may wait long for a reaper in a container)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_processes(
    processes: Iterable[psutil.Process], grace: float, hurry: Callable[[], bool]
) -> None:
    """SIGTERM to each of `processes`, SIGKILL to those alive `grace` seconds later (at once
    when `hurry()` turns true meanwhile)."""
    targets = [process for process in processes if alive(process)]
    _send(targets, psutil.Process.terminate)
    deadline = time.monotonic() + grace
    while any(alive(process) for process in targets):
        if time.monotonic() >= deadline or hurry():
            _send(targets, psutil.Process.kill)
            return
        time.sleep(0.1)


def _send(processes: Iterable[psutil.Process], action: Callable[[psutil.Process], None]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            action(process)


# A look at the server must not hold up a stop: Prefect's client waits 60 s per try and retries
# five times; a signal is noticed only when the look returns.
QUICK_CLIENT = {"request_timeout_s": 5.0, "max_retries": 0}


def _is_final(run_id: str) -> bool:
    """Whether the server shows the flow run in a final state (False when it cannot say within
    a few seconds)."""
    from prefect import get_client
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    quick = {
        PREFECT_API_REQUEST_TIMEOUT: QUICK_CLIENT["request_timeout_s"],
        PREFECT_CLIENT_MAX_RETRIES: QUICK_CLIENT["max_retries"],
    }
    try:
        with temporary_settings(quick), get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
    except (httpx.HTTPError, PrefectException):
        return False
    return state is not None and state.is_final()


class RunsInProgress:
    """The flow runs a worker executes and their processes, as last seen.

    Their processes are remembered because a worker that dies leaves them orphaned, out of its
    process tree. A run is forgotten once its processes have ended and the server shows it
    final (asked once, when they end)."""

    def __init__(self, worker: psutil.Process) -> None:
        self.worker = worker
        self.processes: dict[str, list[psutil.Process]] = {}
        self._ended: set[str] = set()  # runs whose processes ended, the server asked

    def refresh(self, forget: bool = True) -> None:
        """Look again: the worker's current runs and processes are added, and, with `forget`,
        finished runs go (while the worker is stopped, each run is kept to say its end)."""
        for run_id, found in flow_run_processes(self.worker).items():
            known = self.processes.setdefault(run_id, [])
            known.extend(process for process in found if process not in known)
        for run_id, known in list(self.processes.items()) if forget else []:
            if run_id in self._ended or any(alive(process) for process in known):
                continue
            if _is_final(run_id):
                del self.processes[run_id]
            else:
                self._ended.add(run_id)  # left for step 3

    def every_process(self) -> list[psutil.Process]:
        return [process for known in self.processes.values() for process in known]


def mark_crashed(run_ids: Iterable[str], message: str) -> dict[str, str]:
    """Set Crashed each flow run of `run_ids` that is not in a final state yet; returns
    {run name: its final state's name} for every run, to say what became of each."""
    from prefect import get_client
    from prefect.states import Crashed

    outcome: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            flow_run = client.read_flow_run(UUID(run_id))
            if flow_run.state is None or not flow_run.state.is_final():
                client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
                flow_run = client.read_flow_run(flow_run.id)
            outcome[flow_run.name] = flow_run.state.name if flow_run.state else "?"
    return outcome


def _finish(worker: subprocess.Popen[bytes], grace: float, hurry: Callable[[], bool]) -> None:
    """Step 2: SIGTERM to the worker, SIGKILL after `grace` seconds (or at once in a hurry)."""
    if worker.poll() is not None:
        return
    worker.terminate()
    deadline = time.monotonic() + grace
    while worker.poll() is None and time.monotonic() < deadline and not hurry():
        time.sleep(0.1)
    if worker.poll() is None:
        worker.kill()
    worker.wait()


def run_worker(
    command: list[str], cwd: Path, environment: dict[str, str], grace: float = GRACE_S
) -> int:
    """Run the worker `command` until it exits or this process gets SIGTERM or SIGINT, then
    stop it and its flow runs (see the module docstring). Returns the code to exit with: 0
    after a requested stop, else the worker's own exit code."""
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    def hurry() -> bool:
        return len(received) > 1  # a second signal: no more grace

    # Handlers first: a caught signal is reset to its default in the child, an ignored one
    # would stay ignored there (Prefect's worker then ignores SIGTERM too).
    previous = {signum: signal.signal(signum, record) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker = subprocess.Popen(command, cwd=cwd, env=environment, start_new_session=True)
        runs = RunsInProgress(psutil.Process(worker.pid))
        while not received and worker.poll() is None:
            runs.refresh()
            time.sleep(POLL_S)
        started = time.monotonic()
        name = signal.Signals(received[0]).name if received else ""
        if received:
            print(f"deploy: {name}: stopping the runs in progress, then the worker", flush=True)
        runs.refresh()
        stop_processes(runs.every_process(), grace, hurry)  # step 1
        runs.refresh(forget=False)  # a run the worker started meanwhile
        leftovers = runs.worker.children(recursive=True) if worker.poll() is None else []
        _finish(worker, grace, hurry)  # step 2
        stop_processes([*leftovers, *runs.every_process()], 0, hurry)  # orphans of a killed one
        if received:
            how = f"was stopped ({name})"
            said = f"deploy: the worker stopped {time.monotonic() - started:.1f} s after {name}"
        else:
            how = f"exited by itself (exit code {worker.returncode})"
            said = f"deploy: the worker {how}"
        print(f"{said}; flow runs in progress: {_record(runs, how)}", flush=True)
        code = worker.returncode  # negative: killed by a signal, which a shell shows as 128+N
        return 0 if received else (128 - code if code < 0 else code)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _record(runs: RunsInProgress, how: str) -> str:
    """Step 3: set Crashed the runs left unfinished; says what became of each run."""
    if not runs.processes:
        return "none"
    try:
        outcome = mark_crashed(runs.processes, f"the worker {how} while this run was in progress")
    except (httpx.HTTPError, PrefectException) as error:
        return f"{len(runs.processes)}, not recorded on the server ({error})"
    return ", ".join(f"{name!r} {state}" for name, state in outcome.items())
