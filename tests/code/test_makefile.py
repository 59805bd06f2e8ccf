"""The Makefile's promises: `make run` exits with the failing stage's code (through
`python -m flows.repro`) and `make clean` removes every pipeline output and keeps what it says it
keeps. `make run`'s single accuracy line on a real run is in tests/system/test_pipeline.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, run


def _make_run(repo: Path) -> subprocess.CompletedProcess[str]:
    """`make run` in the repo copy with this virtualenv (`-o setup`: never install)."""
    return run(["make", "-o", "setup", "run", f"VENV={VENV_BIN.parent}"], repo, check=False)


def _one_stage_pipeline(repo: Path, name: str, script: str) -> None:
    """Replace the repo copy's pipeline by one stage `name` running `script` (never.txt: an
    output it never writes)."""
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    (repo / f"{name}.py").write_text(script)
    dvc_yaml["stages"] = {name: {"cmd": f"python {name}.py", "outs": ["never.txt"]}}
    dvc_yaml.pop("plots", None)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_make_run_exits_with_a_failing_stages_code(repo: Path) -> None:
    """A real `dvc repro` of a stage that exits 2: DVC exits 255, `python -m flows.repro` exits
    2 and says so; make (which exits 2 for any failed recipe) shows `Error 2`."""
    fails = "import sys\nprint('error: broken.key: wrong', file=sys.stderr)\nsys.exit(2)\n"
    _one_stage_pipeline(repo, "broken", fails)

    assert run(["dvc", "repro"], repo, check=False).returncode == 255  # why the wrapper exists
    direct = run(["python", "-m", "flows.repro"], repo, check=False)
    assert direct.returncode == 2
    log = direct.stdout + direct.stderr
    assert log.count("error: broken.key: wrong") == 1
    assert direct.stderr.strip().splitlines()[-1] == (
        "make run: stage 'broken' failed with exit 2 (a mistake in params.yaml)"
    )

    made = _make_run(repo)
    assert made.returncode == 2  # GNU make's own code for a failed recipe
    # `make` at the top, `make[1]` when this suite itself runs under `make test`
    assert re.search(
        r"^make(\[\d+\])?: \*\*\* \[Makefile:\d+: run\] Error 2$", made.stderr, re.M
    ), made.stderr
    assert "make run: stage 'broken' failed with exit 2" in made.stderr


def test_make_run_stops_at_a_params_mistake_with_its_code(repo: Path) -> None:
    text = (repo / "params.yaml").read_text().replace("\n  lr:", "\n  learning_rate:", 1)
    (repo / "params.yaml").write_text(text)
    made = _make_run(repo)
    assert made.returncode == 2
    errors = [line for line in made.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.learning_rate" in errors[0]
    assert "make run: the params.yaml check failed with exit 2" in made.stderr
    assert "run] Error 2" in made.stderr
    assert not (repo / "dvc.lock").exists()


def _declared_outputs(dvc_yaml: dict, persistent: bool) -> list[str]:
    """Every path dvc.yaml declares as a stage's output, metric or plot: the `persist: true` ones
    (a stage's own memory, such as the model registry) when `persistent`, else all the others."""
    paths = []
    for stage in dvc_yaml["stages"].values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                path, options = (
                    next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                )
                if bool((options or {}).get("persist")) == persistent:
                    paths.append(path)
    return paths


def test_make_clean_removes_every_output_and_keeps_the_cache_sources_and_registry(
    repo: Path,
) -> None:
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    outputs = _declared_outputs(dvc_yaml, persistent=False)
    persistent = _declared_outputs(dvc_yaml, persistent=True)
    assert "models/model.safetensors" in outputs and "reports/metrics.json" in outputs
    assert persistent == ["models/registry"]
    for output in outputs + persistent:  # a file where a file is declared, a folder with a file
        path = repo / output / "part" if not Path(output).suffix else repo / output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("made by the pipeline")
    kept = [".dvc/cache/files/md5/ab/cdef", "data/source.json", "params.yaml", "dvc.yaml"]
    kept.append("models/registry/part")  # the registry is the gate's memory: `make clean` keeps it
    (repo / kept[0]).parent.mkdir(parents=True, exist_ok=True)
    (repo / kept[0]).write_text("cached")
    (repo / "data" / "source.json").write_text("{}")

    run(["make", "clean", f"VENV={VENV_BIN.parent}"], repo)
    assert [output for output in outputs if (repo / output).exists()] == []
    assert [path for path in kept if not (repo / path).exists()] == []


# a stage that says it is ready, then waits; Ctrl-C makes it say so and exit 130 (as train does)
_WAITS = (
    "import sys, time\n"
    "try:\n"  # 'ready' inside the try: a Ctrl-C right after it is still the stage's to handle
    "    print('ready', flush=True)\n"
    "    time.sleep(60)\n"
    "except KeyboardInterrupt:\n"
    "    print('slow: interrupted; run it again to resume', file=sys.stderr, flush=True)\n"
    "    sys.exit(130)\n"
)


def _default_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_under_make_run_shows_the_stages_last_line_and_exits_130(repo: Path) -> None:
    """Ctrl-C reaches every process of the terminal's foreground group: DVC ignores it while a
    stage runs, the stage says it was interrupted, and `flows.repro` must neither die with a
    traceback nor drop the stage's last line."""
    _one_stage_pipeline(repo, "slow", _WAITS)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.repro"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # with Ctrl-C's default action, as a terminal gives its jobs: a shell that starts
        # pytest in the background (`pytest &` in a script) ignores SIGINT for it, and an
        # ignored signal stays ignored across exec
        preexec_fn=_default_interrupt,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:  # until the stage says it is ready
        lines.append(line)
        if line.strip() == "ready":
            break
    # DVC ignores SIGINT only once it has started the stage (dvc/stage/run.py: Popen, then
    # SIG_IGN); on a loaded machine the stage can print before that line runs. A person's Ctrl-C
    # comes during a long stage, not in that instant: wait a little first
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does
    lines.extend(process.stdout)
    output = "".join(lines)
    assert process.wait(timeout=60) == 130, output
    assert "Traceback" not in output, output
    assert "slow: interrupted; run it again to resume" in output
    assert output.strip().splitlines()[-1] == (
        "make run: stage 'slow' failed with exit 130 "
        "(interrupted by Ctrl-C: run it again to resume)"
    )
