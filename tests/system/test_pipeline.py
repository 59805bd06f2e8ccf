"""End to end: `make run` (dvc repro) and the Prefect flow on a shrunk config in a repo copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows.pipeline import stage_order
from tasks.data.sources import write_digits
from tests.conftest import PREFECT_ENV, VENV_BIN, run, write_params

STAGES = [
    *("ingest", "validate", "split", "augment", "tune", "train", "evaluate"),
    *("explain", "compress", "promote", "package", "report"),
]


def _repro(repo: Path, *targets: str) -> str:
    """`make run` (without its set-up step: this virtualenv is used as it is); with `targets`,
    what it runs (`python -m flows.repro`) given those stages, as `dvc repro` takes them."""
    if targets:
        result = run(["python", "-m", "flows.repro", *targets], repo)
    else:
        result = run(["make", "-o", "setup", "run", f"VENV={VENV_BIN.parent}"], repo)
    return result.stdout + result.stderr


def _accuracy_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("test accuracy")]


def _ran(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


# a gate the 3-epoch model passes, so the run goes all the way: a champion, packaged and validated
OPEN_GATE = {
    "gate": {
        "min_accuracy": 0.0,
        "min_invariance": 0.0,
        "min_class_accuracy": 0.0,
        "require_beats_baseline": False,
    }
}


@pytest.mark.slow
def test_make_run_end_to_end_then_noop(repo: Path) -> None:
    write_params(repo, OPEN_GATE)
    output = _repro(repo)
    assert _ran(output) == STAGES
    assert json.loads((repo / "reports" / "package.json").read_text())["passed"]
    gate_lines = [line for line in output.splitlines() if line.startswith("gate: ")]
    assert len(gate_lines) == 1 and "is the champion | served as onnx_" in gate_lines[0]
    last_line = output.split("Running stage 'evaluate'")[1]
    assert "test accuracy" in last_line and "baseline (logistic_regression)" in last_line
    assert len(_accuracy_lines(output)) == 1  # printed by evaluate, not again by `make run`

    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert 0.5 < metrics["test"]["accuracy"] <= 1.0  # 3 tiny epochs still learn digits
    assert metrics["baseline"]["name"] == "logistic_regression"
    assert 0.8 < metrics["baseline"]["accuracy"] <= 1.0
    assert (repo / "models" / "model.safetensors").stat().st_size > 0
    model_info = json.loads((repo / "models" / "model.json").read_text())
    assert model_info["classes"] == [str(d) for d in range(10)]
    manifest = (repo / "data" / "raw" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,label,group,sha256,bytes,status,detail" and len(manifest) == 1798

    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "reports/metrics.json" in shown

    second = _repro(repo)
    assert _ran(second) == []
    assert "Data and pipelines are up to date" in second
    assert _accuracy_lines(second) == _accuracy_lines(output)  # evaluate skipped: read back once

    # changing one key re-runs only the stages that read it
    write_params(repo, {"evaluate": {"baseline": "svc"}})
    third = _repro(repo)
    assert _ran(third) == ["evaluate", "promote", "report"]  # the gate reads the baseline

    # `make clean` keeps DVC's cache: every stage comes back from it; only promote runs again
    # (its registry is its memory, which `make clean` keeps and DVC's run cache cannot restore),
    # finds the candidate is the champion already and changes nothing
    registry = (repo / "models" / "registry" / "registry.json").read_bytes()
    gate = (repo / "reports" / "gate.json").read_bytes()
    run(["make", "clean", f"VENV={VENV_BIN.parent}"], repo)
    assert not (repo / "models" / "model.safetensors").exists()
    restored = _repro(repo)
    assert _ran(restored) == ["promote"], restored[-3000:]
    for stage in set(STAGES) - {"promote"}:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in restored
    assert (repo / "models" / "registry" / "registry.json").read_bytes() == registry
    assert (repo / "reports" / "gate.json").read_bytes() == gate
    assert (repo / "models" / "model.safetensors").stat().st_size > 0
    assert (repo / "reports" / "data" / "class_balance.png").stat().st_size > 0
    assert json.loads((repo / "reports" / "metrics.json").read_text())["baseline"]["name"] == "svc"
    assert len(_accuracy_lines(restored)) == 1


@pytest.mark.slow
def test_adding_a_file_to_a_folder_source_reruns_ingest(repo: Path, tmp_path: Path) -> None:
    # the data stages only (flows.repro validate): the stages after them rerun as for any change
    source = tmp_path / "my-digits"
    write_digits(source)
    write_params(repo, {"data": {"source": str(source)}})
    assert _ran(_repro(repo, "validate")) == ["ingest", "validate"]
    assert _ran(_repro(repo, "validate")) == []

    shutil.copy(source / "3" / "digit_0003.png", source / "3" / "extra_copy.png")
    output = _repro(repo, "validate")
    assert _ran(output) == ["ingest", "validate"]
    rows = (repo / "data" / "raw" / "manifest.csv").read_text()
    assert "3/extra_copy.png" in rows
    quarantine = (repo / "data" / "quarantine" / "manifest.csv").read_text()
    assert "3/extra_copy.png,3,duplicate" in quarantine


@pytest.mark.slow
def test_prefect_flow_runs_every_stage_then_skips_them(trained_repo: Path, tmp_path: Path) -> None:
    # the first run is the one that built the shared trained repository (tests/conftest.py)
    log = (trained_repo.parent / "flow.log").read_text()
    assert "Starting temporary server on http://127.0.0.1" in log
    order = stage_order(trained_repo)  # DVC's graph in a topological order
    assert sorted(order) == sorted(STAGES)
    assert "training-pipeline: " + ", ".join(f"{s} ran" for s in order) in log
    assert (trained_repo / "reports" / "metrics.json").exists()

    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))
    second = run(["python", "-m", "flows.pipeline"], repo, env=PREFECT_ENV)
    log = second.stdout + second.stderr
    skipped = ", ".join(f"{s} skipped (up to date)" for s in order)
    assert "training-pipeline: " + skipped in log
    assert "every stage up to date" in log
    # the flow and dvc agree: dvc itself sees nothing to do
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo).stdout


@pytest.mark.slow
def test_prefect_flow_retries_a_transient_stage_failure(trained_repo: Path, tmp_path: Path) -> None:
    """A stage that exits with EX_TEMPFAIL (75) once is retried by Prefect and the flow succeeds.

    The stage is added to dvc.yaml of a copy of the trained repository (every other stage is
    up to date), which also shows the flow reads the DAG from DVC.
    """
    repo = Path(shutil.copytree(trained_repo, tmp_path / "repo", symlinks=True))
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    flaky = (
        "import pathlib, sys; marker = pathlib.Path('flaky.marker'); "
        "first = not marker.exists(); marker.touch(); "
        "pathlib.Path('flaky.out').write_text('ok'); sys.exit(75 if first else 0)"
    )
    dvc_yaml["stages"]["flaky"] = {
        "cmd": f'python -c "{flaky}"',
        "deps": ["models/model.json"],
        "outs": [{"flaky.out": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    result = run(["python", "-m", "flows.pipeline"], repo, env=PREFECT_ENV)
    log = result.stdout + result.stderr
    assert "flaky ran" in log
    assert "Retry 1/2 will start" in log or "AwaitingRetry" in log
    assert (repo / "flaky.out").read_text() == "ok"
    assert "training-pipeline: " in log and "train skipped (up to date)" in log
