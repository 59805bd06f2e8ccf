"""Continual learning as a Prefect flow: learn from a new labelled batch, behind the gate.

Run once with ``python -m flows.continual --batch SOURCE`` (``--help`` says more); deployed as
`continual-learning`, started by hand or by the drift monitor (which passes no parameters: the
flow then learns from `continual.batch` in params.yaml, and with none configured it says so and
finishes). The work runs as a child process (``python -m tasks.continual.run``): it fine-tunes
a network, and flows know no tensors. The flow reads the run's report and returns its summary:
``{"promoted", "challenger", "champion", "version", "old_test", "new_test", "bento", "report"}``
(accuracies as fractions, each ``{"champion", "challenger"}``), or a Failed state. The round
runs holding the workspace (`flows.workspace`): while another run holds it, the flow fails at
once with one line naming that run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from flows.stages import (
    TRANSIENT_RETRIES,
    StageFailure,
    exit_like,
    python_command,
    reported_failure,
    run_in_child,
)
from flows.workspace import holding_workspace
from tasks.core.config import load_params
from tasks.core.errors import ConfigError
from tasks.core.io import read_json
from tasks.core.layout import Layout
from tasks.core.options import parse_options

LEARN_MODULE = "tasks.continual.run"
NOTHING_CONFIGURED = (
    "continual-learning: no labelled batch is configured (pass --batch, or set continual.batch "
    "in params.yaml); nothing to learn from"
)
USAGE = """\
usage: python -m flows.continual [-h] [--batch SOURCE] [--force]

Learn from a new labelled batch, once, as a Prefect flow (continual-learning): ingest and
validate it, make it a DVC-versioned data version with its own test part, fine-tune the champion
on it plus a replay sample of the old train split (no registered test image), and promote the
challenger only if the promotion gate's rule shows it better on the batch's test part and not
worse by gate.max_regression on the old test set (python -m tasks.continual.run in a child
process). A promoted challenger is packaged and validated as a bento. Writes
data/batches/<version>/ (+ .dvc), the registry and reports/continual/<version>.json with a
plot; the last line is the decision. Holds the workspace meanwhile (.sixfold/workspace.lock),
as the training pipeline does.

options:
  -h, --help        show this message and exit (nothing is run)
  --batch SOURCE    a class-folder tree, a CSV manifest (path,label) or an s3:// prefix
                    (default: continual.batch in params.yaml)
  --force           fine-tune and decide again on a batch that was learnt from before

exit codes: 0 done, whatever the decision (or no batch configured); 1 a data or file problem
(nothing usable in the batch, no champion yet, not a DVC repository); 2 a mistake in params.yaml
or in the arguments; 75 another run (training, continual learning, a drift check) holds the
workspace: one line names it, nothing was touched, try again later; also 75 (after two retries)
when the champion changed while the challenger was fine-tuned: it is recorded as rejected,
never promoted over a model it was not compared with, and a rerun learns from the new champion.

environment:
  PREFECT_API_URL  a Prefect server to record the run in; without it Prefect starts a temporary
                   local server for the run
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)  for an s3:// batch
"""


@task(cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def learn_from_batch(repo_root: str, batch: str, force: bool) -> dict[str, Any] | State:
    """Run one round in a child process; returns its report, or a Failed state."""
    with tempfile.TemporaryDirectory(prefix="sixfold-continual-") as scratch:
        result = Path(scratch) / "report.json"
        arguments = ["--batch", batch, "--result", str(result), *(["--force"] if force else [])]
        command = python_command("-m", LEARN_MODULE, *arguments)
        failed = run_in_child(command, repo_root, "continual-learning", "continual learning")
        return failed or read_json(result)


def outcome(report: dict[str, Any], root: Path) -> dict[str, Any]:
    """What the flow returns: the decision, the two models and the four accuracies."""
    accuracy = report["accuracy"]
    return {
        "promoted": report["promoted"],
        "challenger": report["challenger"],
        "champion": report["champion"],
        "champion_after": report["champion_after"],
        "version": report["version"],
        "old_test": {k: accuracy["old_test"][k] for k in ("champion", "challenger")},
        "new_test": {k: accuracy["new_test"][k] for k in ("champion", "challenger")},
        "bento": report["bento"],
        "report": str(Layout(root).reports_dir / "continual" / f"{report['version']}.json"),
    }


@flow(name="continual-learning", log_prints=True)
def continual_learning(
    batch: str | None = None, repo: str = ".", force: bool = False
) -> dict[str, Any] | State | None:
    """Learn from `batch` (default: `continual.batch`); its outcome (see the module docstring),
    None when no batch is configured, or a Failed state whose data is the StageFailure.

    Args:
        batch: a class-folder tree, a CSV manifest or an s3:// prefix (credentials from the
            environment).
        repo: the repository (its registry, data and params.yaml).
        force: fine-tune and decide again on a batch that was learnt from before.
    """
    root = Path(repo).resolve()
    if batch is None:
        try:
            batch = load_params(Layout(root).params_file).continual.batch
        except ConfigError as error:
            failure = StageFailure("continual-learning", 2, "reading params.yaml")
            print(f"continual-learning: {error}")
            return Failed(message=failure.describe(), data=failure)
    if batch is None:
        print(NOTHING_CONFIGURED)
        return None
    chosen = batch  # a str from here on, for the closure
    return holding_workspace(root, "continual-learning", lambda: _learn(root, chosen, force))


def _learn(root: Path, batch: str, force: bool) -> dict[str, Any] | State:
    """The round itself, run while the flow holds the workspace."""
    state = learn_from_batch(str(root), batch, force, return_state=True)
    if state.is_failed():
        return reported_failure(state, "continual-learning")
    result = outcome(state.result(), root)
    verdict = "promoted" if result["promoted"] else "kept the champion, rejected"
    print(
        f"continual-learning: {verdict} {result['challenger']} (new test part "
        f"{result['new_test']['champion']:.4f} -> {result['new_test']['challenger']:.4f}, old "
        f"test split {result['old_test']['champion']:.4f} -> "
        f"{result['old_test']['challenger']:.4f}); report {result['report']}"
    )
    return result


def _options(arguments: list[str]) -> tuple[str | None, bool]:
    """--batch (``--batch value`` or ``--batch=value``) and --force; exits 2 on anything else."""
    options = parse_options(
        arguments, USAGE.splitlines()[0], valued=("--batch",), switches=("--force",)
    )
    batch = options.get("--batch")
    return (batch if isinstance(batch, str) else None), bool(options.get("--force"))


def main(arguments: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return
    batch, force = _options(arguments)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    exit_like(continual_learning(batch, ".", force, return_state=True))


if __name__ == "__main__":
    main()
