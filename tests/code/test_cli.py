"""How stages fail: one line for a user's mistake (exit 1, or 2 for a config mistake), exit 75
(retried by the flow) for a blip."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import yaml

from tasks.core.errors import ConfigError, UserError
from tasks.core.layout import Layout
from tasks.core.runner import (
    EX_CONFIG,
    EX_INTERRUPTED,
    EX_TEMPFAIL,
    EX_USAGE,
    EX_USER,
    is_transient,
    stage_help,
    stage_main,
)
from tests.conftest import free_port, run, write_params


def test_transient_errors_are_recognised_through_their_causes() -> None:
    assert is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_transient(TimeoutError("slow"))
    assert is_transient(OSError(errno.ECONNRESET, "reset"))
    try:
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))


def test_stage_main_turns_a_user_error_into_one_line(capsys: pytest.CaptureFixture) -> None:
    def main() -> None:
        raise UserError("data.source: 'x' does not exist")

    with pytest.raises(SystemExit) as caught:
        stage_main(main, argv=[])
    assert caught.value.code == EX_USER == 1
    assert capsys.readouterr().err == "error: data.source: 'x' does not exist\n"


def test_stage_main_says_interrupted_on_ctrl_c(capsys: pytest.CaptureFixture) -> None:
    def main() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as caught:
        stage_main(main, argv=[])
    assert caught.value.code == EX_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted (Ctrl-C)") and err.count("\n") == 1


def test_stage_main_exits_2_for_a_config_error(capsys: pytest.CaptureFixture) -> None:
    def main() -> None:
        raise ConfigError("params.yaml: train.lr must be > 0, got -1")

    with pytest.raises(SystemExit) as caught:
        stage_main(main, argv=[])
    assert caught.value.code == EX_CONFIG == 2
    assert capsys.readouterr().err == "error: params.yaml: train.lr must be > 0, got -1\n"


def test_stage_main_exits_75_on_a_network_failure(capsys: pytest.CaptureFixture) -> None:
    def main() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    with pytest.raises(SystemExit) as caught:
        stage_main(main, argv=[])
    assert caught.value.code == EX_TEMPFAIL
    assert "transient" in capsys.readouterr().err


def test_stage_main_lets_bugs_show_their_traceback() -> None:
    def main() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        stage_main(main, argv=[])


def test_stage_main_answers_help_without_running_main(capsys: pytest.CaptureFixture) -> None:
    ran: list[bool] = []
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as caught:
            stage_main(lambda: ran.append(True), argv=[flag])
        assert caught.value.code == 0
        assert capsys.readouterr().out.startswith("usage: python -m tests.code.test_cli [-h]\n")
    assert ran == []


def test_stage_main_refuses_an_unknown_argument_before_main(capsys: pytest.CaptureFixture) -> None:
    ran: list[bool] = []
    with pytest.raises(SystemExit) as caught:
        stage_main(lambda: ran.append(True), options={"--show": "print"}, argv=["--shw"])
    assert caught.value.code == EX_USAGE == 2 and ran == []
    assert capsys.readouterr().err == (
        "error: unknown argument '--shw'; usage: python -m tests.code.test_cli [-h] [--show] "
        "(--help says more)\n"
    )
    stage_main(lambda: ran.append(True), options={"--show": "print"}, argv=["--show"])
    assert ran == [True]


def test_stage_help_lists_what_dvc_yaml_declares(tmp_path: Path) -> None:
    stage = {
        "cmd": "python -m tasks.thing",
        "deps": ["tasks/thing.py", "tasks/core/io.py", "data/in"],
        "params": ["seed", "thing.size", {"other.yaml": ["colour"]}],
        "outs": ["data/out", {"models/state": {"persist": True, "cache": False}}],
        "metrics": [{"reports/thing.json": {"cache": False}}],
        "plots": ["reports/thing.csv"],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"thing": stage}}))
    docstring = "thing: make a thing\n    from the input.\n\nDetails nobody needs in --help."
    text = stage_help("tasks.thing", docstring, Layout(tmp_path), {"--fast": "go faster"})
    assert text.startswith("usage: python -m tasks.thing [-h] [--fast]\n\n")
    assert "thing: make a thing from the input." in text and "Details" not in text
    assert "DVC stage 'thing'" in text
    reads = text.split("\nreads:\n")[1].split("\nwrites:\n")[0].splitlines()
    assert [line.strip() for line in reads] == [
        "data/in",
        "params.yaml: seed, thing.size",
        "other.yaml: colour",
        "code: 2 modules (dvc.yaml lists them)",
    ]
    writes = text.split("\nwrites:\n")[1].split("\n\n")[0].splitlines()
    assert [line.strip() for line in writes] == [
        "data/out",
        "models/state",
        "reports/thing.json (metrics)",
        "reports/thing.csv (plot)",
    ]
    assert "--fast" in text.split("options:")[1] and "go faster" in text


def test_stage_help_of_a_step_outside_dvc_yaml(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    text = stage_help("tasks.other", "other: list things.", Layout(tmp_path), None, ["a"], ["b"])
    assert "Not a DVC stage" in text
    assert "\nreads:\n  a\nwrites:\n  b\n" in text


def test_unreachable_s3_endpoint_exits_75(repo: Path) -> None:
    """A real ingest against an S3 endpoint where nothing listens: transient, so retryable."""
    options = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
    write_params(repo, {"data": {"source": "s3://bucket/x", "storage_options": options}})
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_MAX_ATTEMPTS": "1"}
    result = run(["python", "-m", "tasks.ingest"], repo, check=False, env=env)
    assert result.returncode == EX_TEMPFAIL, result.stderr[-3000:]
    assert "error (transient" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_stages_run_out_of_order_name_the_missing_input(repo: Path) -> None:
    earlier = "the stages before this one"
    for stage, missing, producer in (
        ("validate", "data/raw/manifest.csv", earlier),
        ("split", "data/validated/manifest.csv", earlier),
        ("train", "data/packed/meta.json", "the split stage"),  # a typed file names its producer
        ("evaluate", "models/model.json", earlier),
    ):
        result = run(["python", "-m", f"tasks.{stage}"], repo, check=False)
        assert result.returncode == 1, (stage, result.stderr[-2000:])
        assert result.stderr.strip().splitlines() == [
            f"error: {missing} is missing; run {producer} first (`dvc repro`)"
        ], stage


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_missing_pretrained_weights_are_one_line(repo: Path) -> None:
    model = {"arch": "resnet18", "pretrained": "nowhere/weights.pt"}
    write_params(repo, {"model": model, "tune": {"enabled": False}})
    for stage in ("source", "ingest", "validate", "split", "augment", "tune"):
        run(["python", "-m", f"tasks.{stage}"], repo)
    result = run(["python", "-m", "tasks.train"], repo, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model.pretrained: 'nowhere/weights.pt' does not exist"
    )
    # the search checks the weights once, before starting Ray, not in every trial
    write_params(repo, {"tune": {"enabled": True}})
    result = run(["python", "-m", "tasks.tune"], repo, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: model.pretrained: ")
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # a process per stage or a real training: the full suite's tier
def test_bad_tuned_values_are_one_line(repo: Path) -> None:
    best = repo / "models" / "tune" / "best_params.yaml"
    best.parent.mkdir(parents=True, exist_ok=True)
    best.write_text("train.lr: -1\n")
    result = run(["python", "-m", "tasks.train"], repo, check=False)
    assert result.returncode == 2, result.stderr[-2000:]  # a ConfigError: a bad setting
    assert result.stderr.strip().splitlines() == [
        "error: models/tune/best_params.yaml: overrides: train.lr must be > 0, got -1; "
        "re-run the tune stage"
    ]
    best.write_text("train.lr: [unclosed\n")
    result = run(["python", "-m", "tasks.train"], repo, check=False)
    assert result.returncode == 1 and "not valid YAML" in result.stderr, result.stderr[-2000:]
