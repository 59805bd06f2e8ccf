"""How the flow and `make run` read their children: lines and progress updates as they come, DVC's
outcome and a stage's exit code from DVC's own lines, `--help` that runs nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.stages import (
    DvcOutput,
    LineSplitter,
    ProgressThrottle,
    failure_from_output,
    is_dvc_advice,
    stage_outcome,
    stream,
)
from tests.conftest import run

# A child that draws a tqdm-like bar (many \r redraws, then \n), prints a line, then says why it
# failed on stderr and exits 2.
_BAR = (
    "import sys, time\n"
    "for i in range(1, 201):\n"
    "    sys.stderr.write(f'\\rbar {i}/200'); sys.stderr.flush(); time.sleep(0.002)\n"
    "sys.stderr.write('\\n')\n"
    "print('done with ümlaut')\n"
    "print('error: params.yaml: train.lr must be > 0, got -1', file=sys.stderr)\n"
    "sys.exit(2)\n"
)


def test_the_splitter_tells_lines_from_progress_updates_across_chunk_boundaries() -> None:
    splitter = LineSplitter()
    data = "a line\r\nbar 1\rbar 2\rbar 2 done\nümlaut\nno end".encode()
    pieces = []
    for start in range(len(data)):  # one byte at a time: \r\n and UTF-8 split across chunks
        pieces += splitter.feed(data[start : start + 1])
    pieces += splitter.feed(b"", final=True)
    assert pieces == [
        ("a line", False),
        ("bar 1", True),
        ("bar 2", True),
        ("bar 2 done", False),
        ("ümlaut", False),
        ("no end", False),
    ]


def test_the_throttle_passes_every_line_and_one_progress_update_per_interval() -> None:
    now = [0.0]
    throttle = ProgressThrottle(5.0, lambda: now[0])
    kept = []
    for step in range(100):  # an update every 0.1 s for 10 s
        now[0] = step * 0.1
        if throttle.keep(f"bar {step}", True):
            kept.append(step)
    assert kept == [0, 50]
    assert throttle.keep("a line", False)
    assert not throttle.keep("", True)


def test_stream_delivers_a_real_childs_output_in_order_with_its_exit_code(tmp_path: Path) -> None:
    pieces: list[tuple[str, bool]] = []
    code = stream([sys.executable, "-c", _BAR], tmp_path, lambda *piece: pieces.append(piece))
    assert code == 2
    lines = [text for text, is_progress in pieces if not is_progress]
    assert lines == [
        "bar 200/200",
        "done with ümlaut",
        "error: params.yaml: train.lr must be > 0, got -1",
    ]
    assert sum(is_progress for _, is_progress in pieces) == 200


def test_stream_hands_on_lines_while_the_child_still_runs(tmp_path: Path) -> None:
    """The child waits until the test has seen its first line: output read only at the end
    would never arrive, and the child gives up (exit 3) after 30 s."""
    go = tmp_path / "go"
    child = (
        "import pathlib, sys, time\n"
        "print('waiting for go')\n"  # no flush: stream() makes the child's Python unbuffered
        "deadline = time.monotonic() + 30\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    if time.monotonic() > deadline: sys.exit(3)\n"
        "    time.sleep(0.05)\n"
        "print('went')\n"
    )
    seen: list[str] = []

    def on_piece(text: str, is_progress: bool) -> None:
        seen.append(text)
        if text == "waiting for go":
            go.touch()

    assert stream([sys.executable, "-c", child], tmp_path, on_piece) == 0
    assert seen == ["waiting for go", "went"]


def test_outcomes_and_exit_codes_are_read_from_dvcs_own_words() -> None:
    ran = ["Running stage 'train':", "> python -m tasks.train", "Updating lock file 'dvc.lock'"]
    cached = ["Stage 'ingest' is cached - skipping run, checking out outputs"]
    skipped = ["Stage 'train' didn't change, skipping"]
    assert stage_outcome("train", ran) == "ran"
    assert stage_outcome("ingest", cached) == "restored from cache"
    assert stage_outcome("train", skipped) == "skipped (up to date)"

    failed = [
        "error: params.yaml: train.devices must be a whole number",
        "ERROR: failed to reproduce 'train': failed to run: python -m tasks.train, exited with 2",
    ]
    failure = failure_from_output("train", 255, failed)
    assert (failure.stage, failure.exit_code, failure.transient) == ("train", 2, False)
    assert failure.describe() == "stage 'train' failed with exit 2 (a mistake in params.yaml)"
    lock = ["ERROR: Unable to acquire lock. Most likely another DVC process is running"]
    assert failure_from_output("split", 255, lock).transient
    assert failure_from_output("split", 255, ["ERROR: unexpected error"]).exit_code == 255
    # a stage killed by a signal: DVC says -9, the shell's convention is 128 + 9
    killed = [
        "ERROR: failed to reproduce 'train': failed to run: python -m tasks.train, exited with -9"
    ]
    assert failure_from_output("train", 255, killed).exit_code == 137
    interrupted = failure_from_output("train", 255, [killed[0].replace("-9", "130")])
    assert interrupted.describe().endswith("(interrupted by Ctrl-C: run it again to resume)")


def test_dvcs_lines_are_remembered_however_long_the_stages_output() -> None:
    output = DvcOutput()
    lines = ["Running stage 'train':", "> python -m tasks.train"]
    lines += [f"epoch {epoch}/500: val_acc 0.5" for epoch in range(1, 501)]
    lines += ["train: exported", "Updating lock file 'dvc.lock'"]
    for line in lines:
        output.record(line)
    assert stage_outcome("train", output.lines) == "ran"
    assert output.lines == ["Running stage 'train':"]


def test_dvcs_git_advice_is_recognised_line_by_line(tmp_path: Path) -> None:
    """The advice a real `dvc repro` prints after a stage that changed something."""
    repository = tmp_path / "advice"
    repository.mkdir()
    run(["git", "init", "-q"], repository)
    run(["dvc", "init", "-q"], repository)
    stage = {"cmd": "echo made > made.txt", "outs": ["made.txt"]}
    (repository / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": stage}}))
    output = run(["dvc", "repro"], repository).stdout.splitlines()
    assert any("git add" in line for line in output)
    assert [line for line in output if not is_dvc_advice(line)] == [
        "Running stage 'make':",
        "> echo made > made.txt",
        "Generating lock file 'dvc.lock'",
        "Updating lock file 'dvc.lock'",
    ]


@pytest.mark.parametrize("module", ["flows.pipeline", "flows.repro"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_runs_nothing(repo: Path, module: str, flag: str) -> None:
    before = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True, text=True
    ).stdout
    started = time.monotonic()
    result = run(["python", "-m", module, flag], repo)
    assert result.stdout.startswith(f"usage: python -m {module}")
    assert "exit codes:" in result.stdout and "--help" in result.stdout
    assert "Starting temporary server" not in result.stdout + result.stderr
    after = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True, text=True
    ).stdout
    assert after == before  # no data/source.json, no dvc.lock, no outputs
    assert time.monotonic() - started < 60


def test_flow_help_names_the_prefect_server_setting(repo: Path) -> None:
    assert "PREFECT_API_URL" in run(["python", "-m", "flows.pipeline", "--help"], repo).stdout


def test_flow_refuses_an_unknown_argument_without_running(repo: Path) -> None:
    result = run(["python", "-m", "flows.pipeline", "--fast"], repo, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown argument '--fast'; see python -m flows.pipeline --help"
    ]
    assert not (repo / "dvc.lock").exists()


def test_the_run_artifact_reads_every_shape_of_the_reports(tmp_path: Path) -> None:
    """Before the first promotion gate.json's champion is null; reports may be missing."""
    import json

    from flows.pipeline import run_summary

    outcome = {"train": "ran", "evaluate": "skipped (up to date)"}
    assert "No test metrics" in run_summary(tmp_path, outcome, {})
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "gate.json").write_text(
        json.dumps(
            {
                "decision": "rejected",
                "candidate": {"id": "abc123"},
                "champion": None,
                "reasons": ["test accuracy 0.5000 < gate.min_accuracy 0.9000"],
            }
        )
    )
    (tmp_path / "reports" / "metrics.json").write_text(
        json.dumps(
            {
                "test": {"accuracy": 0.5, "accuracy_ci": [0.4, 0.6], "macro_f1": 0.5, "ece": 0.1},
                "baseline": {"name": "logistic_regression", "accuracy": 0.7},
            }
        )
    )
    summary = run_summary(tmp_path, outcome, {"train.lr": 0.001})
    assert "**Gate**: rejected (candidate abc123; champion now none)" in summary
    assert "- test accuracy 0.5000 < gate.min_accuracy 0.9000" in summary
    assert "| test accuracy | 0.5 (95% CI 0.4 to 0.6) |" in summary
    assert "| baseline (logistic_regression) | 0.7 |" in summary
    assert "`train.lr=0.001`" in summary and "| evaluate | skipped (up to date) |" in summary
    (tmp_path / "reports" / "gate.json").write_text("[]")  # not an object: no gate line
    assert "**Gate**" not in run_summary(tmp_path, outcome, {})
