"""The Prefect flow as a user meets it (a real temporary Prefect server, real DVC): one line per
mistake and the stage's exit code, progress while a stage runs, and a truthful outcome per stage.

Most tests here replace the repo copy's dvc.yaml with a few small stages, so the flow's own
behaviour is tested in seconds; tests/system/test_pipeline.py runs it on the real pipeline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, run, write_params
from tests.images import noise, png_bytes, write

# The stages' script: `first` prints a progress bar, says it waits, waits for the file `go`
# (created by the test once it has seen that line), then writes its output; `second` copies it;
# `flaky` always fails as a network error does.
STAGE_SCRIPT = """\
import pathlib, sys, time
name = sys.argv[1]
if name == "first":
    for i in range(1, 101):
        sys.stderr.write(f"\\rfirst: {i}/100"); sys.stderr.flush(); time.sleep(0.01)
    sys.stderr.write("\\n")
    print("first: waiting for go")
    deadline = time.monotonic() + 120
    while not pathlib.Path("go").exists():
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.05)
    pathlib.Path("first.out").write_text("first")
elif name == "second":
    pathlib.Path("second.out").write_text(pathlib.Path("first.out").read_text() + " second")
else:
    print("error (transient, a retry may succeed): refused", file=sys.stderr)
    sys.exit(75)
"""


def _small_pipeline(repo: Path, with_flaky: bool = False) -> None:
    (repo / "stage_script.py").write_text(STAGE_SCRIPT)
    stages = {
        "first": {
            "cmd": "python stage_script.py first",
            "deps": ["stage_script.py"],
            "outs": ["first.out"],
        },
        "second": {
            "cmd": "python stage_script.py second",
            "deps": ["first.out"],
            "outs": ["second.out"],
        },
    }
    if with_flaky:
        stages["flaky"] = {
            "cmd": "python stage_script.py flaky",
            "deps": ["second.out"],
            "outs": ["flaky.out"],
        }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


# A loaded machine (CI, the test suite in parallel) can take longer than Prefect's 20 s to start
# its temporary server.
PREFECT_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def _flow(repo: Path) -> subprocess.CompletedProcess[str]:
    return run(["python", "-m", "flows.pipeline"], repo, check=False, env=PREFECT_ENV)


def _stage_errors(log: str) -> list[str]:
    """The lines that carry a stage's own `error: ...` message."""
    return [
        line for line in log.splitlines() if re.search(r"(^|\s)error( \(transient[^)]*\))?: ", line)
    ]


@pytest.mark.slow
def test_flow_streams_progress_and_says_ran_skipped_or_restored(repo: Path) -> None:
    _small_pipeline(repo)
    environment = {
        **os.environ,
        **PREFECT_ENV,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline"],
        cwd=repo,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert flow.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    for line in flow.stdout:  # the stage waits for `go`: its line must come while it runs
        lines.append(line)
        if "first: waiting for go" in line:
            (repo / "go").touch()
            break
        assert time.monotonic() < deadline, "".join(lines)
    assert flow.poll() is None  # the flow was still running when its stage's line arrived
    lines += flow.stdout.readlines()
    assert flow.wait(timeout=120) == 0, "".join(lines)
    log = "".join(lines)
    assert "training-pipeline: first ran, second ran" in log
    progress = [line for line in lines if re.search(r"first: \d+/100", line)]
    assert 1 <= len(progress) <= 3  # 100 redraws thinned out, the finished bar kept
    assert any("first: 100/100" in line for line in progress)
    assert "git add" not in log and "dvc push" not in log and "auto staging" not in log

    second = _flow(repo)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "training-pipeline: first skipped (up to date), second skipped (up to date)" in log
    assert "every stage up to date" in log

    # `make clean` for this pipeline: the outputs go, DVC's cache keeps them
    (repo / "first.out").unlink()
    (repo / "second.out").unlink()
    third = _flow(repo)
    log = third.stdout + third.stderr
    assert third.returncode == 0, log[-3000:]
    assert "training-pipeline: first restored from cache, second restored from cache" in log
    assert (repo / "second.out").read_text() == "first second"


@pytest.mark.slow
def test_a_params_mistake_is_one_line_and_exit_2(repo: Path) -> None:
    text = (repo / "params.yaml").read_text().replace("\n  lr:", "\n  learning_rate:", 1)
    (repo / "params.yaml").write_text(text)
    result = _flow(repo)
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-3000:]
    errors = _stage_errors(log)
    assert len(errors) == 1 and "train.learning_rate" in errors[0], log[-3000:]
    assert "Traceback" not in log
    assert "the params.yaml check failed with exit 2 (a mistake in params.yaml)" in log
    assert not (repo / "dvc.lock").exists()


@pytest.mark.slow
def test_a_data_mistake_in_a_stage_is_one_line_and_exit_1(repo: Path, tmp_path: Path) -> None:
    """A class with two images: the split stage cannot give it a place in every split."""
    source = tmp_path / "images"
    for number, (label, count) in enumerate((("cat", 20), ("dog", 20), ("fox", 2))):
        for index in range(count):
            write(source / label / f"{index}.png", png_bytes(noise(number * 1000 + index)))
    write_params(repo, {"data": {"source": str(source), "image_size": 16}})
    result = _flow(repo)
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    errors = _stage_errors(log)
    assert len(errors) == 1 and "fox" in errors[0], log[-3000:]
    assert "Traceback" not in log
    assert "stage 'split' failed with exit 1 (a mistake in the data or files)" in log
    assert "ingest ran" not in log  # no success summary for a failed flow
    assert len(log.splitlines()) < 50, log


@pytest.mark.slow
def test_a_transient_failure_is_retried_then_exits_75(repo: Path) -> None:
    _small_pipeline(repo, with_flaky=True)
    (repo / "go").touch()
    result = _flow(repo)
    log = result.stdout + result.stderr
    assert result.returncode == 75, log[-3000:]
    assert "Retry 1/2 will start" in log and "Retry 2/2 will start" in log
    assert "Retries are exhausted" in log
    assert len(_stage_errors(log)) == 3  # one line per attempt, no more
    assert "Traceback" not in log and "NoneType: None" not in log
    assert "stage 'flaky' failed with exit 75" in log
