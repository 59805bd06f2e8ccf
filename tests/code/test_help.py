"""`python -m tasks.<stage> --help` explains the stage and does nothing else; a wrong argument is
refused before any work. Each stage runs for real, as a subprocess in a copy of the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, SHRUNK, copy_of_repository, run

DVC_STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
STAGE_MODULES = sorted(
    re.fullmatch(r"python -m tasks\.(\w+)", stage["cmd"]).group(1) for stage in DVC_STAGES.values()
)
ALL_STEPS = [*STAGE_MODULES, "source"]  # the source step runs before `dvc repro`, outside it


@pytest.fixture(scope="module")
def help_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the repository shared by the tests here: none of them may change it."""
    return copy_of_repository(tmp_path_factory.mktemp("help") / "repo", SHRUNK)


def _tree(repo: Path) -> dict[str, tuple[int, int]]:
    """Every file under `repo` (bytecode caches aside) with its size and modification time."""
    return {
        str(path.relative_to(repo)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in repo.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def _summary(step: str) -> str:
    """The first paragraph of the step's module docstring, as one line."""
    docstring = ast.get_docstring(ast.parse((REPO_ROOT / "tasks" / f"{step}.py").read_text()))
    return " ".join((docstring or "").split("\n\n")[0].split())


def _declared_outputs(step: str) -> list[str]:
    stage = next(s for s in DVC_STAGES.values() if s["cmd"] == f"python -m tasks.{step}")
    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries]


@pytest.mark.parametrize("step", ALL_STEPS)
def test_help_explains_the_step_and_does_no_work(help_repo: Path, step: str) -> None:
    before = _tree(help_repo)
    result = run(["python", "-m", f"tasks.{step}", "--help"], help_repo, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith(f"usage: python -m tasks.{step} [-h]"), out
    assert _summary(step) in " ".join(out.split()), out
    assert "\nreads:\n" in out and "\nwrites:\n" in out, out
    writes = out.split("\nwrites:\n")[1]
    for output in _declared_outputs(step) if step in STAGE_MODULES else ["data/source.json"]:
        assert output in writes, (output, out)
    assert "Traceback" not in result.stderr
    assert _tree(help_repo) == before, "--help created or changed files"


def test_short_help_flag_and_what_a_stage_reads(help_repo: Path) -> None:
    result = run(["python", "-m", "tasks.split", "-h"], help_repo, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    reads = result.stdout.split("\nreads:\n")[1].split("\nwrites:\n")[0]
    split = DVC_STAGES["split"]
    for dependency in (d for d in split["deps"] if not d.endswith(".py")):
        assert dependency in reads
    for key in split["params"]:
        assert key in reads
    assert "tasks/split.py" not in reads  # code is counted, not listed


def test_evaluate_lists_its_show_option(help_repo: Path) -> None:
    result = run(["python", "-m", "tasks.evaluate", "--help"], help_repo, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: python -m tasks.evaluate [-h] [--show]")
    assert "\n  --show " in result.stdout


@pytest.mark.parametrize(
    ("step", "arguments"),
    [("ingest", ["--bogus"]), ("train", ["--max-epochs", "3"]), ("evaluate", ["--show", "x"])],
)
def test_an_unknown_argument_is_one_usage_line_and_exit_2(
    help_repo: Path, step: str, arguments: list[str]
) -> None:
    before = _tree(help_repo)
    result = run(["python", "-m", f"tasks.{step}", *arguments], help_repo, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    unknown = next(argument for argument in arguments if argument not in ("--show",))
    assert result.stderr.strip().splitlines() == [
        f"error: unknown argument {unknown!r}; usage: python -m tasks.{step} [-h]"
        + (" [--show]" if step == "evaluate" else "")
        + " (--help says more)"
    ]
    assert _tree(help_repo) == before, "a refused command line still did work"


def test_config_check_answers_help(help_repo: Path) -> None:
    result = run(["python", "-m", "tasks.core.config", "--help"], help_repo, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m tasks.core.config [-h] [PATH]")
    assert "params.yaml" in result.stdout
    result = run(["python", "-m", "tasks.core.config", "--strict"], help_repo, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown option '--strict'; usage: python -m tasks.core.config [-h] [PATH] "
        "(--help says more)"
    ]
    result = run(["python", "-m", "tasks.core.config"], help_repo, check=False)
    assert (result.returncode, result.stdout) == (0, "params.yaml: ok\n")


ENTRY_POINTS = [
    "flows.pipeline",
    "flows.monitor",
    "flows.continual",
    "flows.deploy",
    "flows.drift_demo",
    "tasks.monitoring.simulate",
    "tasks.core.overrides",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_answers_help_and_refuses_a_bad_argument(
    help_repo: Path, module: str
) -> None:
    before = _tree(help_repo)
    result = run(["python", "-m", module, "--help"], help_repo, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: python -m {module} [-h]"), result.stdout[:300]
    result = run(["python", "-m", module, "--bogus"], help_repo, check=False)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "--bogus" in lines[0], lines
    assert _tree(help_repo) == before, "--help or a refused command line did work"
