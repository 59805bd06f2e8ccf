"""The workspace lock (flows/workspace.py): one holder at a time, the refused one told who holds
it, the lock free again when its holder ends, however it ends (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.workspace import WorkspaceBusy, WorkspaceLock, describe_holder, lock_path
from tests.conftest import REPO_ROOT

HOLD_SCRIPT = """\
import sys, time
from pathlib import Path
from flows.workspace import WorkspaceLock
lock = WorkspaceLock.acquire(Path(sys.argv[1]), "a held child (pid in the test)")
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A repository root (params.yaml marks it) with a subfolder."""
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "data").mkdir()
    return tmp_path


def test_a_second_holder_is_refused_at_once_with_the_first_ones_name(workspace: Path) -> None:
    with WorkspaceLock.acquire(workspace, "training-pipeline (flow run 'crimson-fox')"):
        assert lock_path(workspace) == workspace / ".sixfold" / "workspace.lock"
        with pytest.raises(WorkspaceBusy) as refused:
            WorkspaceLock.acquire(workspace / "data", "continual-learning")  # the same workspace
        assert refused.value.holder == "training-pipeline (flow run 'crimson-fox')"
        assert str(refused.value) == (
            f"the workspace {workspace} is held by training-pipeline (flow run 'crimson-fox')"
        )
    with WorkspaceLock.acquire(workspace, "drift-monitor"):  # given back at the block's end
        assert lock_path(workspace).read_text() == "drift-monitor\n"
    assert lock_path(workspace).read_text() == ""  # no stale name once released


def test_the_lock_is_free_again_when_its_holder_is_killed(workspace: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(workspace)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(WorkspaceBusy, match="a held child"):
            WorkspaceLock.acquire(workspace, "test")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with WorkspaceLock.acquire(workspace, "test"):  # the kernel released it with the process
        pass


def test_a_holder_outside_a_flow_run_is_named_by_its_process() -> None:
    named = describe_holder("training-pipeline")
    assert named.startswith("training-pipeline (pid ") and " UTC)" in named


def test_make_run_fails_at_once_while_a_flow_holds_the_workspace(repo: Path) -> None:
    """`python -m flows.repro` (what `make run` runs) obeys the same rule as the flows: exit 75
    and one line naming the holder, before any step (no source fingerprint, no dvc.lock)."""
    with WorkspaceLock.acquire(repo, "training-pipeline (flow run 'crimson-fox')"):
        result = subprocess.run(
            [sys.executable, "-m", "flows.repro"],
            cwd=repo,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    assert result.returncode == 75, result.stdout + result.stderr
    assert "held by training-pipeline (flow run 'crimson-fox')" in result.stdout
    assert "make run: " in result.stderr
    assert not (repo / "dvc.lock").exists()
