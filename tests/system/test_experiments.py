"""Experiments a user can compare: metrics committed with dvc.lock, `dvc metrics diff`,
`dvc exp show` in 120 columns (`make exps`), and `dvc plots show` that renders offline.

A copy of the shared trained repository (one real pipeline, no search), committed to git as a
user would, then one experiment with `dvc exp run -S`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run


def _commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


@pytest.fixture(scope="module")
def experimented(trained_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained repository (a real run of the whole pipeline, no search) committed as
    a user would, then one experiment."""
    repo = tmp_path_factory.mktemp("experiments") / "repo"
    shutil.copytree(trained_repo, repo, symlinks=True)
    _commit(repo, "a first run")
    run(["dvc", "exp", "run", "--name", "small-batches", "-S", "train.batch_size=32"], repo)
    return repo


@pytest.mark.slow
def test_the_headline_metrics_are_committed_and_diffable(experimented: Path) -> None:
    tracked = run(["git", "ls-files", "reports"], experimented).stdout.split()
    assert "reports/metrics.json" in tracked
    assert "reports/dvclive/plots/metrics/val/acc.tsv" in tracked
    metrics = json.loads((experimented / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"test", "baseline", "val"}  # the search was off: no tune column
    shown = run(["dvc", "metrics", "show", "--json"], experimented).stdout
    assert list(json.loads(shown)[""]["data"]) == ["reports/metrics.json"]  # "": the workspace
    # the experiment is applied to the workspace: HEAD (the first run) must load, and differ
    diff = run(["dvc", "metrics", "diff", "HEAD", "--json"], experimented)
    assert "failed to load" not in diff.stdout + diff.stderr
    changes = json.loads(diff.stdout)["reports/metrics.json"]
    assert changes["test.accuracy"]["old"] is not None
    assert changes["test.accuracy"]["new"] is not None


@pytest.mark.slow
def test_make_exps_fits_120_columns_with_the_headline_and_the_varied_param(
    experimented: Path,
) -> None:
    result = run(["make", "exps"], experimented, env={"COLUMNS": "120"})
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 120, result.stdout
    header = next(line for line in lines if "Experiment" in line)
    for column in ("test.accuracy", "train.batch_size"):
        assert column in header, result.stdout
    assert "…" not in result.stdout, result.stdout  # no column squeezed out of sight
    assert "!" not in result.stdout, result.stdout  # every revision's metrics load
    branch = run(["git", "branch", "--show-current"], experimented).stdout.strip()
    rows = [line for line in lines if "small-batches" in line or f" {branch} " in line]
    assert len(rows) == 2, result.stdout
    batch_sizes = [re.findall(r"\b(?:32|64)\b", row)[-1] for row in rows]
    assert sorted(batch_sizes) == ["32", "64"], result.stdout


@pytest.mark.slow
def test_dvc_plots_show_renders_offline_and_is_ignored(experimented: Path) -> None:
    run(["dvc", "plots", "show"], experimented)
    page = (experimented / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "a script loaded from elsewhere"
    assert "https://cdn" not in page
    assert "vegaEmbed(" in page and "vega-embed" in page
    status = run(["git", "status", "--porcelain", "--ignored"], experimented).stdout
    assert "!! dvc_plots/" in status
