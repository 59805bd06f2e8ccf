"""A real HTTP server for the length of a `with` block: started, awaited, and always stopped.

The package stage validates the bento the way a deployment would run it: `bentoml serve <tag>`
in its own process. The server is stopped on success, on a failed check and on Ctrl-C alike:
a stage that leaves a server listening would hold the model in memory and its port for good.

BentoML's server is a process tree (an arbiter and its workers), and the workers run in
sessions of their own, out of reach of the arbiter's process group. So every process of one
server carries a marker in its environment (inherited by everything it starts): the group gets
SIGTERM, and whatever still carries the marker after a grace period gets SIGKILL.

The output of the server goes to a file rather than a pipe (a pipe nobody reads fills up and
blocks the server); its last lines name the problem when the server does not come up.

Every server started here gets a BentoML home of its own (:func:`private_bentoml_home`): the
store's `models` and `bentos` folders, linked, beside its own state. BentoML keeps a server's
Prometheus files in `$BENTOML_HOME/prometheus_multiproc_dir` and empties that folder when a
server starts (`bentoml.serving.ensure_prometheus_dir`, whatever PROMETHEUS_MULTIPROC_DIR
says), so a validation server started in the project's home wiped the files of the live
`make serve`: its /metrics then showed the dead validation server's counts, frozen.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tasks.core.errors import UserError

LOOPBACK = "127.0.0.1"
MARKER_VARIABLE = "SIXFOLD_SERVER_RUN"  # in the environment of every process of one server
HOME_VARIABLE = "BENTOML_HOME"
SHARED_STORES = ("models", "bentos")  # what a private home links to; the rest is its own
# Measured on the 2-core machine: `bentoml serve` of the digits bento answers /readyz after about
# 8 s when idle and 25 s while other processes hold the cores; 180 s leaves room for a loaded CI.
STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0  # BentoML drains in-flight requests on SIGTERM; more than this is a hang
POLL_INTERVAL_S = 0.25
LOG_LINES_SHOWN = 3
# A worker whose service cannot start (a corrupt model file, an import error) is restarted by
# BentoML's arbiter forever, and the server never exits: measured, a corrupt ONNX file kept
# `bentoml serve` failing until the 180 s timeout. Uvicorn logs this line at each failed start;
# after STARTUP_FAILURES of them the server is given up on.
STARTUP_FAILED = "Application startup failed"
STARTUP_FAILURES = 2
# The last line of a Python traceback: `package.module.SomeError: message`.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S")


class ServerFailed(UserError):
    """The server exited or did not answer its readiness probe in time."""


@dataclass(frozen=True)
class Server:
    """A started server: its base URL, its process, the file its output goes to and the
    marker in the environment of its every process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    marker: str

    def log_tail(self, lines: int = LOG_LINES_SHOWN) -> str:
        return log_tail(self.log, lines)


def free_port(host: str = LOOPBACK) -> int:
    """A port on `host` where nothing listens now (the probe releases it when it closes)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def bentoml_serve_command(target: str, port: int, host: str = LOOPBACK) -> list[str]:
    """`bentoml serve <target>` on `host:port`, run by this interpreter (the project's venv)."""
    executable = Path(sys.executable).with_name("bentoml")
    prefix = [str(executable)] if executable.exists() else [sys.executable, "-m", "bentoml"]
    return [*prefix, "serve", target, "--host", host, "--port", str(port)]


def log_lines(log: Path) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def log_tail(log: Path, lines: int = LOG_LINES_SHOWN) -> str:
    """The last non-empty `lines` of a log file joined with ' | ' (for a one-line message)."""
    return " | ".join(log_lines(log)[-lines:])[-600:]


def startup_failure(log: Path) -> str | None:
    """Why the service keeps failing to start (the last exception line, else the log's tail),
    once its log shows STARTUP_FAILURES failed starts; None before that."""
    lines = log_lines(log)
    if sum(STARTUP_FAILED in line for line in lines) < STARTUP_FAILURES:
        return None
    exceptions = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (exceptions[-1] if exceptions else log_tail(log))[:600]


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every process of this user whose environment carries `marker` (a server's whole tree,
    orphans included)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER_VARIABLE) == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop(server: Server, grace: float = STOP_GRACE_S) -> None:
    """Stop the server and every process it started: SIGTERM to its process group (BentoML's
    arbiter stops its workers), then SIGKILL to whatever still carries its marker after
    `grace`. Workers run in sessions of their own, so the group alone does not reach them, and
    one that failed to start may ignore SIGTERM (measured: it outlived its arbiter by minutes).
    """
    process = server.process
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process.poll() is not None and not marked_processes(server.marker):
            return
        time.sleep(POLL_INTERVAL_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    left = marked_processes(server.marker)
    for survivor in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    psutil.wait_procs(left, timeout=grace)
    process.wait()


def wait_ready(server: Server, probe: str, timeout: float) -> None:
    """Return once GET `probe` answers 200; raise ServerFailed if the server exits or times out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise ServerFailed(
                    f"the server exited with code {server.process.returncode} before it was "
                    f"ready: {server.log_tail() or 'no output'}"
                )
            if reason := startup_failure(server.log):
                raise ServerFailed(
                    f"the service failed to start {STARTUP_FAILURES} times, given up: {reason}"
                )
            try:
                status = client.get(server.url + probe).status_code
            except httpx.TransportError as error:
                last = type(error).__name__
            else:
                if status == 200:
                    return
                last = f"HTTP {status}"
            time.sleep(POLL_INTERVAL_S)
    raise ServerFailed(
        f"the server was not ready within {timeout:g} s (GET {probe}: {last}): "
        f"{server.log_tail() or 'no output'}"
    )


def private_bentoml_home(environment: Mapping[str, str], folder: Path) -> dict[str, str]:
    """`environment` with BENTOML_HOME moved to `folder`/bentoml: a home whose `models` and
    `bentos` are links to the stores of the home `environment` names (BentoML's default,
    ~/bentoml, when none), so the server finds every model and bento there, while the state
    BentoML keeps per server (the Prometheus files, wiped at each start) stays its own. A store
    the shared home does not have is not made there (BentoML makes an empty one in `folder`)."""
    shared = Path(environment.get(HOME_VARIABLE) or Path.home() / "bentoml").expanduser()
    home = folder / "bentoml"
    home.mkdir()
    for store in SHARED_STORES:
        if (shared / store).is_dir():
            (home / store).symlink_to((shared / store).resolve(), target_is_directory=True)
    return {**environment, HOME_VARIABLE: str(home)}


@contextmanager
def running(
    command: Sequence[str],
    port: int,
    environment: Mapping[str, str],
    cwd: Path,
    probe: str = "/readyz",
    timeout: float = STARTUP_TIMEOUT_S,
    grace: float = STOP_GRACE_S,
    private_home: bool = True,
) -> Iterator[Server]:
    """Start `command` (a server listening on 127.0.0.1:`port`), wait for `probe`, yield it,
    and stop it with every process it started when the block ends, however it ends.

    `private_home`: the server gets a BentoML home of its own (:func:`private_bentoml_home`);
    False only for a server that stands for the live one (`make serve`, in the project's home).
    """
    marker = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="sixfold-server-") as folder:
        log = Path(folder) / "server.log"
        if private_home:
            environment = private_bentoml_home(environment, Path(folder))
        with open(log, "wb") as output:
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env={**environment, MARKER_VARIABLE: marker},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        server = Server(f"http://{LOOPBACK}:{port}", process, log, marker)
        try:
            with terminated_as_exit():
                wait_ready(server, probe, timeout)
                yield server
        finally:
            stop(server, grace)


class Terminated(SystemExit):
    """SIGTERM arrived (DVC, Prefect or a CI runner cancelling the stage)."""


@contextmanager
def terminated_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (exit code 143) instead of ending
    the process on the spot, so that `finally` clauses still stop the server. Python's default
    for SIGTERM runs no cleanup at all; the previous handler is restored on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return

    def exit_on_sigterm(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
