"""Deploy sixfold's flows to a Prefect server and start a worker: what ``make deploy`` runs.

Three steps against the server at ``PREFECT_API_URL`` (a local one: ``make prefect-server``):

1. the process work pool ``sixfold`` (the one prefect.yaml names) is created if it is missing;
2. every deployment of prefect.yaml is created or updated (``prefect deploy --all``): the weekly
   `training-pipeline`, the hourly `drift-monitor` and `continual-learning`, which the monitor
   starts when it finds drift. Their runs execute in this repository (``SIXFOLD_REPO``, which
   prefect.yaml's pull step reads, is set to the repository root here);
3. a process worker for the pool starts in the foreground (``--no-worker``: skip it), so the
   scheduled runs happen while it runs. It runs as a child (`flows.worker`): Ctrl-C or SIGTERM
   stops it within 30 s, and a flow run in progress is stopped with it and ends Crashed, not
   Running; the deployments stay in place.

It first says which server and which Prefect home it uses (``PREFECT_API_URL``,
``PREFECT_HOME``: ``make deploy`` sets them to ``make prefect-server``'s, see the Makefile).

Each Prefect command's output is shown as it comes; a failure is one ``error:`` line naming the
step, exit 1 (75 when the server cannot be reached: start it, then try again).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from prefect.settings import PREFECT_API_URL, PREFECT_HOME

from flows.worker import run_worker
from tasks.core.options import parse_options
from tasks.core.runner import EX_TEMPFAIL

USAGE = """\
usage: python -m flows.deploy [-h] [--no-worker]

Create the process work pool, deploy every deployment of prefect.yaml (prefect deploy --all) and
start a worker for the pool in the foreground, against the Prefect server at PREFECT_API_URL.
Runs in the repository around the working directory; writes nothing there.

options:
  -h, --help    show this message and exit (nothing is run)
  --no-worker   deploy only; start a worker later with
                `prefect worker start --pool sixfold --type process`

The worker stops on Ctrl-C or SIGTERM within 30 s: the processes of a flow run in progress get
SIGTERM (SIGKILL 10 s later), then the worker does; a run left unfinished is set Crashed.

exit codes: 0 deployed (and, with a worker, the worker stopped by Ctrl-C or SIGTERM); 1 a
Prefect command failed; 2 a bad argument or no PREFECT_API_URL; 75 the server did not answer;
otherwise the exit code of a worker that stopped by itself.

environment:
  PREFECT_API_URL  the Prefect server's API, e.g. http://127.0.0.1:4200/api (make prefect-server);
                   or set in the active Prefect profile (prefect config set PREFECT_API_URL=...)
  PREFECT_HOME     Prefect's local folder (profiles, the worker's files); make deploy sets it to
                   the checkout's .prefect, as make prefect-server does
"""

POOL = "sixfold"


def prefect_executable() -> str:
    """The `prefect` command of the environment this module runs in."""
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else shutil.which("prefect") or "prefect"


def server_answers(api_url: str) -> bool:
    """True when the server's health endpoint answers."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def repository_root(start: Path) -> Path:
    """The folder around `start` that holds prefect.yaml."""
    for folder in (start, *start.parents):
        if (folder / "prefect.yaml").is_file():
            return folder
    raise FileNotFoundError("prefect.yaml")


def run_prefect(arguments: list[str], root: Path, what: str) -> None:
    """Run a Prefect command in `root`, its output shown; exit 1 with one line if it fails."""
    environment = {**os.environ, "SIXFOLD_REPO": str(root)}
    result = subprocess.run([prefect_executable(), *arguments], cwd=root, env=environment)
    if result.returncode != 0:
        print(f"error: {what} failed (prefect exited {result.returncode}; its output is above)")
        raise SystemExit(1)


def pool_exists(pool: str, root: Path) -> bool:
    result = subprocess.run(
        [prefect_executable(), "work-pool", "inspect", pool],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def deploy(root: Path, pool: str) -> None:
    """Steps 1 and 2: the work pool (if missing) and every deployment of prefect.yaml."""
    if pool_exists(pool, root):
        print(f"deploy: work pool {pool!r} exists")
    else:
        run_prefect(["work-pool", "create", pool, "--type", "process"], root, "creating the pool")
    run_prefect(["--no-prompt", "deploy", "--all"], root, "prefect deploy --all")


def parse(arguments: list[str]) -> bool:
    """Whether to start a worker (no ``--no-worker``); exits 2 on any other argument."""
    options = parse_options(arguments, USAGE.splitlines()[0], valued=(), switches=("--no-worker",))
    return not options.get("--no-worker")


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return
    worker, pool = parse(arguments), POOL
    api_url = PREFECT_API_URL.value() or ""  # the environment, else the active Prefect profile
    if not api_url:
        print(
            "error: PREFECT_API_URL is not set; start a server (make prefect-server) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
        raise SystemExit(2)
    print(f"deploy: Prefect API {api_url} (PREFECT_API_URL); Prefect home {PREFECT_HOME.value()}")
    if not server_answers(api_url):
        print(f"error: no Prefect server answers at {api_url}; start it (make prefect-server)")
        raise SystemExit(EX_TEMPFAIL)
    try:
        root = repository_root(Path.cwd().resolve())
    except FileNotFoundError:
        print("error: no prefect.yaml here or above; run inside the sixfold repository")
        raise SystemExit(2) from None
    deploy(root, pool)
    if not worker:
        print(f"deploy: done; start a worker with: prefect worker start --pool {pool}")
        return
    print(f"deploy: starting a process worker for pool {pool!r} (Ctrl-C or SIGTERM stops it)")
    environment = {**os.environ, "SIXFOLD_REPO": str(root)}
    command = [prefect_executable(), "worker", "start", "--pool", pool, "--type", "process"]
    raise SystemExit(run_worker(command, root, environment))


if __name__ == "__main__":
    main()
