"""`make drift-demo` on a trained repository (a real `dvc repro` of the digits): drift is found on
the drifted requests and not on the clean ones (the validation split: held out from the
monitor's reference), continual learning is due only after `monitor.consecutive` drifted checks
in a row and promotes the challenger, and the served model does better on the drifted data
without forgetting the old task. The demo works in a scratch copy: the repository's own
registry and data stay as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


def test_the_drift_demo_finds_drift_learns_and_serves_a_better_model(
    trained_repo: Path, prefect_server: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(trained_repo, repo, symlinks=True)
    registry_before = (repo / "models" / "registry" / "registry.json").read_text()
    result = run(
        ["python", "-m", "flows.drift_demo", "--requests", "200"],
        repo,
        env={"PREFECT_API_URL": prefect_server},
    )
    demo = json.loads((repo / "reports" / "drift_demo.json").read_text())
    log = result.stdout + result.stderr
    assert demo["drift_on_drifted"] is True, log[-3000:]
    assert demo["drift_on_clean"] is False, log[-3000:]
    assert demo["consecutive"] == 2 and demo["drifted_checks"] == [True, True], demo
    assert demo["continual_due"] is True
    assert "drift 1 of 2 in a row: continual learning not started yet" in log
    assert "drift 2 of 2 in a row: continual learning is due" in log
    assert demo["images"]["clean_requests"] == 270  # the validation split
    assert demo["promoted"] is True, log[-3000:]
    assert demo["drifted_acc_after"] - demo["drifted_acc_before"] >= 0.10, demo
    assert demo["old_acc_before"] - demo["old_acc_after"] <= 0.01, demo
    assert demo["images"]["drifted_requests"] == 200
    assert demo["served_after"] != demo["champion_before"]
    assert (repo / "reports" / "drift_demo.png").stat().st_size > 0
    assert "drift-demo: drift on drifted True, on clean False; promoted True" in log
    # the workspace itself is untouched: same registry, no new data version, no scratch left
    assert (repo / "models" / "registry" / "registry.json").read_text() == registry_before
    assert not (repo / "data" / "batches").exists()
    assert "is kept in" not in log
