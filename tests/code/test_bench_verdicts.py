"""Benchmarks enforce their targets: a missed target exits non-zero, the summary table fails too,
and `--impossible-target` makes any benchmark miss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import common, summary
from benchmarks.common import Check, finish


@pytest.fixture
def bench_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(common, "BENCH_DIR", tmp_path)
    monkeypatch.setattr(summary, "BENCH_DIR", tmp_path)
    return tmp_path


def test_a_met_target_is_recorded_with_its_verdict(bench_dir: Path) -> None:
    assert finish("fast", {"ratio": 7.5}, [Check("ratio", 7.5, ">=", 5.0)], argv=[])
    result = json.loads((bench_dir / "fast.json").read_text())
    assert result["meets_target"] is True and result["target"] == "ratio >= 5"
    assert result["ratio"] == 7.5 and result["checks"][0]["passed"] is True


def test_a_missed_target_exits_non_zero(bench_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        finish("slow", {"seconds": 4.0}, [Check("seconds", 4.0, "<", 3.0)], argv=[])
    assert caught.value.code == 1
    assert json.loads((bench_dir / "slow.json").read_text())["meets_target"] is False
    assert "seconds = 4 MISSES the target seconds < 3" in capsys.readouterr().out


def test_an_impossible_target_fails_any_measurement(bench_dir: Path) -> None:
    for op in (">=", "<=", ">", "<"):
        with pytest.raises(SystemExit):
            finish("any", {}, [Check("x", 1.0, op, 1.0)], argv=["--impossible-target"])
    # the self-test's verdict lands beside, not over, a real result
    assert not (bench_dir / "any.json").exists()
    assert (bench_dir / "any.impossible-target.json").exists()


def test_the_summary_table_fails_when_one_benchmark_missed(
    bench_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    finish("good", {}, [Check("ratio", 2.0, ">=", 1.0)], argv=[])
    with pytest.raises(SystemExit):
        finish("bad", {}, [Check("ratio", 0.5, ">=", 1.0)], argv=[])
    rows, every_target_met = summary.table(["good", "bad", "absent"])
    assert not every_target_met
    assert any(row == "| good | ratio | 2 | >= 1 | meets |" for row in rows)
    assert any(row == "| bad | ratio | 0.5 | >= 1 | MISSES |" for row in rows)
    assert any(row.startswith("| absent |") and "NO RESULT" in row for row in rows)
    rows, every_target_met = summary.table(["good"])
    assert every_target_met


def test_every_benchmark_module_is_listed() -> None:
    names = summary.benchmark_names()
    assert {"data_throughput", "hpo_efficiency", "noop_repro", "train_overhead"} <= set(names)
    assert "common" not in names and "summary" not in names
