"""The training pipeline as a Prefect flow: one Prefect task per DVC stage, in DVC's order.

Run locally with ``python -m flows.pipeline`` (Prefect starts a temporary local server; nothing to
set up). Point ``PREFECT_API_URL`` at a Prefect server to see the runs in its UI.

DVC stays the single cache: every task runs ``dvc repro --single-item <stage>``, so a stage whose
inputs did not change is skipped by DVC here exactly as under ``dvc repro``. Prefect adds retries
with exponential backoff for transient failures (a stage exiting with EX_TEMPFAIL = 75, or DVC's
repository lock being held) and observability; deployments and schedules are a later addition.
This module knows nothing of tensors; it only reads the DAG and runs stages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.core.runner import EX_TEMPFAIL  # torch-free: flows know no tensors


class StageFailed(RuntimeError):
    """A stage failed for a reason a retry will not fix (bad data, bad params, a bug)."""


class TransientStageError(RuntimeError):
    """A stage failed for a reason a retry may fix."""


def stage_order(repo_root: str | Path = ".") -> list[str]:
    """Names of the stages in dvc.yaml, dependencies first (read from DVC's own graph)."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(reversed(list(nx.lexicographical_topological_sort(graph, key=str))))
        return [stage.name for stage in order if getattr(stage, "name", None)]


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TransientStageError:
        return True
    except Exception:
        return False
    return False


def _dvc(arguments: list[str], repo_root: Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).with_name("dvc")
    command = [str(executable) if executable.exists() else "dvc", *arguments]
    return subprocess.run(command, cwd=repo_root, capture_output=True, text=True, check=False)


RETRIES = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_condition_fn": _is_transient,
}


@task(cache_policy=NO_CACHE, **RETRIES)
def refresh_source(repo_root: str) -> str:
    """Re-fingerprint data.source so DVC sees files added to a folder or bucket outside the repo."""
    result = subprocess.run(
        [sys.executable, "-m", "tasks.source"], cwd=repo_root, capture_output=True, text=True
    )
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip()
        if result.returncode == EX_TEMPFAIL:
            raise TransientStageError(message)
        raise StageFailed(message)
    get_run_logger().info(result.stdout.strip())
    return result.stdout.strip()


@task(cache_policy=NO_CACHE, **RETRIES)
def run_stage(stage: str, repo_root: str) -> str:
    """Run one DVC stage; returns 'ran' or 'skipped' (DVC found it up to date)."""
    logger = get_run_logger()
    result = _dvc(["repro", "--single-item", stage], Path(repo_root))
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        message = f"stage {stage!r} failed (dvc exit {result.returncode}):\n{output[-4000:]}"
        if f"exited with {EX_TEMPFAIL}" in output or "Unable to acquire lock" in output:
            raise TransientStageError(message)
        raise StageFailed(message)
    ran = f"Running stage '{stage}'" in output
    logger.info("%s: %s\n%s", stage, "ran" if ran else "up to date, skipped by DVC", output[-4000:])
    return "ran" if ran else "skipped"


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(repo_root: str = ".") -> dict[str, str]:
    """Run every DVC stage in order, one Prefect task each; returns {stage: 'ran' | 'skipped'}."""
    root = str(Path(repo_root).resolve())
    check = subprocess.run(
        [sys.executable, "-m", "tasks.core.config"], cwd=root, capture_output=True, text=True
    )
    if check.returncode != 0:  # a params.yaml error stops the flow before any stage work
        raise StageFailed(check.stderr.strip())
    refresh_source(root)
    outcome: dict[str, str] = {}
    for stage in stage_order(root):
        outcome[stage] = run_stage.with_options(name=f"dvc:{stage}")(stage, root)
    summary = ", ".join(f"{stage} {state}" for stage, state in outcome.items())
    print(f"training-pipeline: {summary}")
    return outcome


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    outcome = training_pipeline(".")
    if all(state == "skipped" for state in outcome.values()):
        print("training-pipeline: every stage up to date")


if __name__ == "__main__":
    main()
