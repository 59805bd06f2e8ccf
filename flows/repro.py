"""What ``make run`` runs: check params.yaml, refresh the source's fingerprint, ``dvc repro``, then
one accuracy line; exits with the failing stage's own exit code.

Run with ``python -m flows.repro [dvc repro arguments]`` (``--help`` says what it does).

``dvc repro`` streams through unchanged (stdout and stderr together). Two things it does not do
are done here: DVC exits 255 whatever a stage's code was (its last line names the code), so this
wrapper exits with the stage's code (1 a mistake in the data or files, 2 in params.yaml, 75 a
transient error) and says so in one last line; and ``test accuracy ...`` is printed once: by the
evaluate stage when it ran, else from ``reports/metrics.json`` (``python -m tasks.evaluate
--show``). GNU make exits 2 whenever a recipe fails, so under ``make run`` the stage's code shows
in this module's last line and in make's ``Error <code>`` line. Torch-free.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

from flows.stages import (
    DvcOutput,
    StageFailure,
    child_environment,
    dvc_command,
    failure_from_output,
    python_command,
    stream,
)
from flows.workspace import WorkspaceBusy, WorkspaceLock, describe_holder, refusal
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.core.runner import EX_INTERRUPTED, EX_TEMPFAIL

USAGE = """\
usage: python -m flows.repro [-h] [DVC_REPRO_ARGUMENT ...]    (what `make run` runs)

Bring the pipeline up to date in the repository of the working directory: check params.yaml
(python -m tasks.core.config), refresh the data source's fingerprint (python -m tasks.source),
run `dvc repro` with the given arguments (stage names, --force, ...), then print the one line
`test accuracy ... | baseline ...` from reports/metrics.json and one line with the promotion
gate's decision, the served model format and the HTML report's path. Reads params.yaml, dvc.yaml
and the data source; writes what the stages write (data/, models/, reports/, dvc.lock).

exit codes: 0 success; otherwise the failing step's own code: 1 a mistake in the data or files,
2 a mistake in params.yaml, 75 a transient error (network, timeout) or the workspace held by
another run (a Prefect flow run or another `make run`: one line names it), 130 interrupted by Ctrl-C
(the stage's own last line says where it resumes), 128+N killed by signal N; DVC's own code (255)
for a failure that is not a stage's. Under `make run`, make itself exits 2 and prints
`Error <code>`.

options:
  -h, --help  show this message and exit (nothing is run)
"""

ACCURACY_PREFIX = "test accuracy"


def _say_failure(failure: StageFailure) -> int:
    print(f"make run: {failure.describe()}", file=sys.stderr)
    return failure.exit_code


def repro(arguments: list[str]) -> int:
    """Run the steps of `make run` holding the workspace (the rule of `flows.workspace`: a
    Prefect flow run or another `make run` in this checkout makes this one fail at once, exit
    75, before it touches anything); returns the exit code."""
    layout = Layout.discover()
    try:
        lock = WorkspaceLock.acquire(layout.root, describe_holder("make run"))
    except WorkspaceBusy as busy:
        print(f"error: {refusal(busy, 'make run')}")
        return _say_failure(StageFailure("workspace", EX_TEMPFAIL, "the workspace lock"))
    with lock:
        return _repro(layout, arguments)


def _repro(layout: Layout, arguments: list[str]) -> int:
    steps = (
        ("the params.yaml check", ["-m", "tasks.core.config"]),
        ("the source fingerprint (tasks.source)", ["-m", "tasks.source"]),
    )
    for label, step in steps:
        command = python_command(*step)
        code = subprocess.run(command, cwd=layout.root, env=child_environment()).returncode
        if code != 0:
            return _say_failure(StageFailure(step[-1], code, label))

    dvc_output = DvcOutput()
    accuracy_shown = False

    def forward(text: str, is_progress: bool) -> None:
        nonlocal accuracy_shown
        sys.stdout.write(text + ("\r" if is_progress else "\n"))
        sys.stdout.flush()
        if not is_progress:
            accuracy_shown = accuracy_shown or text.startswith(ACCURACY_PREFIX)
            dvc_output.record(text)

    code = stream(dvc_command("repro", *arguments), layout.root, forward)
    if code != 0:
        failure = failure_from_output("dvc repro", code, dvc_output.lines, label="dvc repro")
        return _say_failure(failure)
    if not accuracy_shown and layout.metrics_file.exists():  # evaluate was up to date or restored
        show = python_command("-m", "tasks.evaluate", "--show")
        code = subprocess.run(show, cwd=layout.root, env=child_environment()).returncode
        if code != 0:
            return code
    line = release_line(layout)
    if line:
        print(line, flush=True)
    return 0


def release_line(layout: Layout) -> str | None:
    """One line: the gate's decision, the champion, the format it is served in, whether its bento
    passed validation and where the report is; None before the gate has run."""
    try:
        gate = read_json(layout.gate_report)
    except (OSError, ValueError):
        return None
    candidate = (gate.get("candidate") or {}).get("id", "?")
    champion = (gate.get("champion") or {}).get("id")
    served = (gate.get("champion") or {}).get("served_format")  # the champion's, not this run's
    if gate.get("decision") == "promoted":
        line = f"gate: {candidate} is the champion"
    else:
        reason = (gate.get("reasons") or ["no reason recorded"])[0]
        stays = f"; the champion stays {champion}" if champion else "; there is no champion"
        line = f"gate: rejected {candidate} ({reason}){stays}"
    if served:
        line += f" | served as {served}"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if read_json(layout.package_report)["passed"]:
            line += " (bento validated: make serve)"
    if layout.html_report.exists():
        line += f" | report: {layout.relative(layout.html_report)}"
    return line


def main(arguments: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if arguments is None else arguments
    if "-h" in arguments or "--help" in arguments:
        print(USAGE, end="")
        return
    try:
        code = repro(arguments)
    except KeyboardInterrupt:  # Ctrl-C before or after dvc repro (during it, stream() waits)
        print("make run: interrupted (Ctrl-C); run it again to go on", file=sys.stderr)
        code = EX_INTERRUPTED
    raise SystemExit(code)


if __name__ == "__main__":
    main()
