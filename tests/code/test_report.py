"""The HTML report (`python -m tasks.report`), built from report files each test writes itself.

The files follow the schemas the stages write (reports/metrics.json, evaluation.json,
explain/summary.json, compress.json, gate.json, package.json, the registry's registry.json, ...)
and the flows write after the run (reports/monitor/<time>.json, reports/continual/<version>.json),
with class labels that hold HTML (`<script>`, `&`) to prove every value is escaped.
`write_reports` is also what the browser test (tests/system/test_report_browser.py) renders.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.reporting import deployment_sections, inputs
from tasks.reporting.build import SECTION_IDS, render_report
from tasks.reporting.provenance import Commit, Provenance, build_time, collect
from tests.conftest import REPO_ROOT, run

LABELS = ("0", "1", "<script>alert(1)</script>", "a&b")
EXPLAIN_METHODS = ("integrated_gradients", "gradient_shap", "lime")
FIGURES = (  # every PNG the page inlines, relative to reports/
    "data/class_balance.png",
    "data/image_sizes.png",
    "data/quarantine.png",
    "augment/preview.png",
    "tune/trials.png",
    "tune/best_so_far.png",
    "tune/dimensions.png",
    "plots/learning_curves.png",
    "plots/confusion.png",
    "plots/reliability.png",
    *(f"explain/{method}.png" for method in EXPLAIN_METHODS),
    "monitor/2025-03-02T100000Z.png",  # the newest drift check's plot
)
SECTIONS = 15
# a provenance fixed in advance: a render that asks neither the clock nor git
FIXED = Provenance(datetime(2025, 3, 4, 5, 6, tzinfo=UTC), Commit("abc1234"), "0123456789ab")
# trials.csv as the tune stage writes it for the shipped search space: wider than the page
TRIALS_CSV = (
    "config/train.lr,config/augment.hflip,config/augment.rotation,config/augment.scale,"
    "config/model.width,trial_id,best_val_acc,last_val_acc,epochs_run,status,retries,time_s,"
    "epoch_s,chosen\n"
    "0.003,False,12,0.1,16,aaa111,0.99,0.985,8,finished,0,41.2,1.9,True\n"
    "0.0001,True,180,0.25,32,bbb222,0.95,0.95,2,finished,0,12.5,3.8,False\n"
)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid one-colour PNG, written by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def report_files(labels: tuple[str, ...] = LABELS) -> dict[str, Any]:
    """Every JSON report the page reads (path under reports/ -> content), as the stages write."""
    per_class = {
        label: {"precision": 0.98, "recall": 0.97, "f1": 0.975, "support": 27} for label in labels
    }
    counts = {label: 100 + i for i, label in enumerate(labels)}
    return {
        "data/validation.json": {
            "total": 420,
            "accepted": 418,
            "quarantined": 2,
            "quarantined_fraction": 2 / 420,
            "reasons": {"duplicate": 1, "undecodable": 1, "too_small": 0},
            "ignored": {"count": 1, "reasons": {"hidden": 1}, "examples": []},
            "class_balance": {"counts": counts, "max_min_ratio": 1.03},
        },
        "data/split.json": {
            "counts": {name: dict(counts) for name in ("train", "val", "test")},
            "groups": {"train": 0, "val": 0, "test": 0},
            "cv_folds": 1,
            "near_duplicate_distance": 0,
            "near_duplicate_pairs_across_splits": 0,
            "near_duplicate_examples": [],
        },
        "tune/summary.json": {
            "enabled": True,
            "trials": 2,
            "best_val_acc": 0.99,
            "best_params": {"train.lr": 0.003, "model.dropout": 0.1},
            "epochs_run": 9,
            "errored_trials": 0,
            "retried_trials": 0,
            "resumed": False,
            "minutes": 1.62,
            "budget": {
                "trials": 2,
                "max_epochs": 8,
                "budget_minutes": 1.5,
                "epoch_seconds": 2.4,
                "steps_per_epoch": 59,
                "slots": 2,
                "expected_minutes": 1.4,
                "reason": "1.5 min at 2.4 s per epoch pays for 75 epochs: 2 trials of up to 8",
                "stopped_by_budget": False,
            },
        },
        "train.json": {
            "epochs_run": 20,
            "best_epoch": 15,
            "exported_epoch": 15,
            "stopped_early": True,
            "train_acc": 1.0,
            "val_acc": 0.99,
            "train_val_gap": 0.01,
            "train_loss": 0.01,
            "val_loss": 0.03,
            "overfit_warning": False,
            "device": "cpu",
            "world_size": 1,
        },
        "metrics.json": {
            "test": {
                "accuracy": 0.987,
                "macro_f1": 0.986,
                "accuracy_ci": [0.981, 0.993],
                "ece": 0.012,
            },
            "baseline": {"name": "logistic_regression", "accuracy": 0.97},
            "val": {"accuracy": 0.99, "gap": 0.01},
            "tune": {"best_val_acc": 0.99, "trials": 2},
        },
        "evaluation.json": {
            "test": {
                "n": 27 * len(labels),
                "accuracy": 0.987,
                "accuracy_ci": [0.981, 0.993],
                "macro_f1": 0.986,
                "ece": 0.012,
                "bootstrap": {"confidence": 0.9, "samples": 200, "seed": 1},
                "per_class": per_class,
                "reliability": [
                    {"low": 0.0, "high": 0.5, "count": 0, "confidence": 0.0, "accuracy": 0.0},
                    {"low": 0.9, "high": 1.0, "count": 100, "confidence": 0.97, "accuracy": 0.98},
                ],
            },
            "baseline": {"name": "logistic_regression", "accuracy": 0.97},
        },
        "explain/summary.json": {
            "methods": {
                method: {
                    "sanity": {"correlation": 0.1, "threshold": 0.5, "passed": True},
                    "seconds": 2.5,
                }
                for method in EXPLAIN_METHODS
            },
            "images": {"sampled": 20, "misclassified": 3, "misclassified_shown": 3},
            "passed": True,
        },
        "compress.json": {
            "models": {
                "torch_fp32": {
                    "accuracy": 0.987,
                    "size_mb": 0.4,
                    "latency_ms_b1": 0.5,
                    "latency_ms_b32": 0.1,
                },
                "onnx_fp32": {
                    "accuracy": 0.987,
                    "size_mb": 0.4,
                    "latency_ms_b1": 0.2,
                    "latency_ms_b32": 0.05,
                },
                "onnx_int8": {
                    "accuracy": 0.985,
                    "size_mb": 0.1,
                    "latency_ms_b1": 0.1,
                    "latency_ms_b32": 0.04,
                },
            },
            "served": "onnx_int8",
            "reason": "serving onnx_int8: drop 0.002 <= 0.005 & 2.5x faster",
            "threads": 2,
        },
        "gate.json": {
            "decision": "rejected",
            "reasons": ["accuracy 0.5000 < gate.min_accuracy 0.9 <sic>", "invariance 0.98 >= 0.9"],
            "rules": [
                {
                    "name": "min_accuracy",
                    "passed": False,
                    "reason": "accuracy 0.5000 < gate.min_accuracy 0.9 <sic>",
                },
                {"name": "behaviour", "passed": True, "reason": "invariance 0.98 >= 0.9"},
            ],
            "candidate": {"id": "c2", "accuracy": 0.5, "params_hash": "ab12", "parent": "c1"},
            "champion": {
                "id": "c1",
                "accuracy": 0.987,
                "params_hash": "cd34",
                "parent": None,
                "served_format": "onnx_int8",
            },
            "previous_champion": {"id": "c1", "accuracy": 0.987, "params_hash": "cd34"},
        },
        # rebuilt by continual learning when it promoted c3, after the run that judged c2
        "package.json": {
            "bento": "sixfold-classifier:ffee01",
            "model": "sixfold-classifier:c3",
            "champion": "c3",
            "served_format": "onnx_int8",
            "checks": [
                {"name": "server starts", "passed": True, "detail": "ready after 4.2 s"},
                {"name": "golden images match", "passed": True, "detail": "8 of 8 <exact>"},
                {"name": "bad request: undecodable bytes", "passed": True, "detail": "400"},
            ],
            "latency_ms": {"p50": 12.34, "p99": 56.78, "requests": 8},
            "passed": True,
        },
        "monitor/2025-03-01T100000Z.json": drift_check("2025-03-01T10:00:00+00:00", False),
        "monitor/2025-03-02T100000Z.json": drift_check("2025-03-02T10:00:00+00:00", True),
        "monitor/state.json": {"until": "2025-03-02T09:59:00+00:00", "report": "x.json"},
        "continual/b7e1.json": continual_round("b7e1", "c3", promoted=True),
    }


def drift_check(created: str, drift: bool | None) -> dict[str, Any]:
    """A drift monitor's report (tasks/monitoring/report.py build_report, and "created")."""
    status = {True: "drift", False: "no drift", None: "no verdict"}[drift]
    return {
        "records": 120,
        "since": "2025-03-01T00:00:00+00:00",
        "until": created,
        "drift": drift,
        "status": status,
        "reason": f"{status}: 1 of 7 tests below p 0.01 <after Holm>",
        "warnings": [],
        "continual": {
            "drift_in_a_row": int(bool(drift)),
            "needed": 2,
            "start": False,
            "message": "drift 1 of 2 in a row: continual learning not started yet",
        },
        "tests": [
            {
                "name": "ks: mean",
                "drift": bool(drift),
                "level": 0.01,
                "statistic": 0.41,
                "p_value": 0.0001 if drift else 0.52,
                "adjusted_p": 0.0007 if drift else 1.0,
                "effect": "psi",
                "effect_value": 0.8,
                "effect_threshold": 0.2,
                "samples": {"reference": 270, "served": 120},
            },
            {
                "name": "mannwhitney:confidence",
                "drift": False,
                "level": 0.01,
                "statistic": 7000.0,
                "p_value": 0.3,
                "adjusted_p": 1.0,
                "effect": "mean_drop",
                "effect_value": 0.01,
                "effect_threshold": 0.05,
                "samples": {"reference": 270, "served": 120},
                "note": "mean confidence 0.97 vs 0.98",
            },
        ],
        "model": {"champion": "c1", "records": 120, "versions": {"c1": 120}},
        "reference": {"test_images": 270, "statistics_images": 270, "note": ""},
        "log": {"files": 1, "unreadable_lines": 0},
        "settings": {"false_alarm_rate": 0.01, "consecutive": 2},
        "plot": created[:10] + "T100000Z.png",
        "created": created,
    }


def continual_round(version: str, challenger: str, promoted: bool) -> dict[str, Any]:
    """Continual learning's report (tasks/continual/run.py), the fields the page reads."""

    def scores(champion: float, new: float, images: int) -> dict[str, Any]:
        return {
            "images": images,
            "champion": champion,
            "challenger": new,
            "difference": new - champion,
            "interval": [0.0, 0.1],
        }

    return {
        "version": version,
        "source": "/data/new <batch>",
        "batch": {"train": 196, "test": 84, "quarantined": 1, "accepted": 280, "total": 281},
        "replay_images": 392,
        "accuracy": {"old_test": scores(0.987, 0.983, 270), "new_test": scores(0.6, 0.95, 84)},
        "promoted": promoted,
        "decision": "promoted" if promoted else "rejected",
        "reasons": ["gain 0.35 > continual.min_gain 0 & forgetting 0.004 <= 0.01"],
        "champion": "c1",
        "challenger": challenger,
        "champion_after": challenger if promoted else "c1",
        "bento": "sixfold-classifier:aa11" if promoted else None,
        "bento_error": None,
    }


def registry_file() -> dict[str, Any]:
    """models/registry/registry.json (tasks/registry/store.py Registry): two pipeline models
    judged on the same test split, and a continual challenger judged on a larger test set."""

    def entry(identity: str, status: str, test_sha: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": identity,
            "created": f"2025-03-0{identity[-1]}T08:00:00+00:00",
            "files": {"test.npz": {"sha256": test_sha, "bytes": 10}},
            "served_format": "onnx_int8",
            "served_file": "onnx/model.int8.onnx",
            "accuracy": 0.987,
            "test_metrics": {},
            "baseline": None,
            "data_version": "d" * 24,
            "test_images": 270,
            "params_hash": "p" * 24,
            "parent": None,
            "status": status,
            "reasons": ["accuracy 0.987 >= 0.9 <ok>"],
            **fields,
        }

    lineage = {
        "kind": "continual",
        "batch": "b7e1",
        "source": "/data/new",
        "train_images": 196,
        "test_images": 84,
        "replay_images": 392,
    }
    candidates = [
        entry("c1", "retired", "1" * 64),
        entry("c2", "rejected", "1" * 64, accuracy=0.5, parent="c1"),
        entry(
            "c3",
            "champion",
            "3" * 64,
            accuracy=0.975,
            parent="c1",
            data_version="b7e1",
            test_images=354,
            lineage=lineage,
        ),
    ]
    events = [
        {"time": "2025-03-01T08:00:00+00:00", "kind": "registered", "candidate": "c1"},
        {"time": "2025-03-01T08:00:00+00:00", "kind": "promoted", "candidate": "c1"},
        {"time": "2025-03-02T08:00:00+00:00", "kind": "registered", "candidate": "c2"},
        {
            "time": "2025-03-02T08:00:00+00:00",
            "kind": "rejected",
            "candidate": "c2",
            "reasons": ["accuracy 0.5000 < 0.9"],
        },
        {"time": "2025-03-03T11:00:00+00:00", "kind": "registered", "candidate": "c3"},
        {"time": "2025-03-03T11:00:00+00:00", "kind": "retired", "candidate": "c1"},
        {"time": "2025-03-03T11:00:00+00:00", "kind": "promoted", "candidate": "c3"},
    ]
    return {"format_version": 1, "champion": "c3", "candidates": candidates, "events": events}


def write_reports(root: Path, skip: tuple[str, ...] = ()) -> Layout:
    """A repository folder at `root` with dvc.yaml and every report but those in `skip` (paths
    under reports/, and "registry" for models/registry/registry.json)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")  # who writes what, for the notes
    (root / "params.yaml").write_text("seed: 1\n")
    layout = Layout(root)
    for name, content in report_files().items():
        if name not in skip:
            write_json(layout.reports_dir / name, content)
    if "registry" not in skip:
        write_json(layout.registry_dir / "registry.json", registry_file())
    trials = layout.tune_reports / "trials.csv"
    if "tune/trials.csv" not in skip:
        trials.write_text(TRIALS_CSV)
    for index, name in enumerate(FIGURES):
        if name not in skip:
            path = layout.reports_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(40 + index, 30, (30 * index % 256, 90, 160)))
    return layout


def section_bodies(html: str) -> dict[str, str]:
    """Section id -> its HTML, in page order."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def test_every_section_is_there_in_order_with_its_figures_inlined(tmp_path: Path) -> None:
    report = render_report(write_reports(tmp_path), FIXED)
    sections = section_bodies(report.html)
    assert tuple(sections) == SECTION_IDS
    assert len(SECTION_IDS) == SECTIONS and report.incomplete == ()
    assert 'class="note missing"' not in report.html
    sources = re.findall(r'<img src="([^"]+)"', report.html)
    assert len(sources) == len(FIGURES)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    # offline: nothing fetched, nothing run
    assert not re.search(r'(src|href)="(?!data:|#)', report.html), "an external reference"
    assert "<script" not in report.html
    for section_id in SECTION_IDS:  # the contents link every section
        assert f'href="#{section_id}"' in report.html
    # every table sits in a box that scrolls sideways, so none can widen the page
    assert report.html.count("<table>") == report.html.count('<div class="table"><table>') > 10


def test_the_headline_and_the_sections_show_the_figures(tmp_path: Path) -> None:
    html = render_report(write_reports(tmp_path), FIXED).html
    headline = html.split('<nav id="contents">')[0]
    assert "test accuracy (90 % interval)" in headline
    assert "98.70&nbsp;%" in headline and "[98.10&nbsp;%, 99.30&nbsp;%]" in headline
    assert "97.00&nbsp;%" in headline and "logistic_regression" in headline
    assert ">rejected<" in headline and "onnx_int8" in headline
    sections = section_bodies(html)
    assert "0.0120" in sections["calibration"] and "0.9700" in sections["calibration"]
    assert "0.9860" in sections["metrics"] and "0.9750" in sections["metrics"]
    assert "+1.70 points" in sections["metrics"] and "90 % interval" in sections["metrics"]
    assert "<b>0.0120</b>" in sections["calibration"]
    assert 'class="highlight"' in sections["compression"]  # the served model's row
    assert "1.00x" in sections["compression"] and "0.40x" in sections["compression"]
    assert "aaa111" in sections["tuning"] and "bbb222" in sections["tuning"]
    assert "passed" in sections["explanations"] and "0.100" in sections["explanations"]
    assert "accepted + quarantined = total (418 + 2 = 420)" in sections["data-validation"]
    gate = sections["gate"]
    assert "champion before" in gate and ">failed</span> accuracy 0.5000 &lt;" in gate
    assert ">passed</span> invariance 0.98" in gate
    assert "No champion" not in gate
    assert "no leakage found" in sections["split-leakage"]


def test_every_string_from_a_file_is_escaped(tmp_path: Path) -> None:
    html = render_report(write_reports(tmp_path), FIXED).html
    assert "<script" not in html and "alert(1)</" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&amp;b" in html and "&lt;sic&gt;" in html and "&amp; 2.5x faster" in html
    assert "8 of 8 &lt;exact&gt;" in html and "&lt;after Holm&gt;" in html
    assert "accuracy 0.5000 &lt; 0.9" in html  # a registry event's reason


def test_missing_reports_say_which_stage_writes_them(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    report = render_report(layout, FIXED)  # no report at all: a page, not a crash
    sections = section_bodies(report.html)
    assert tuple(sections) == SECTION_IDS
    # no drift check and no continual decision is normal (those flows have not run): complete
    assert [section.id for section in report.incomplete] == list(SECTION_IDS[:-2])
    expected = {
        "data-validation": "dvc repro validate",
        "split-leakage": "dvc repro split",
        "augmentation": "dvc repro augment",
        "tuning": "dvc repro tune",
        "learning-curves": "dvc repro train",
        "metrics": "dvc repro evaluate",
        "confusion": "dvc repro evaluate",
        "calibration": "dvc repro evaluate",
        "explanations": "dvc repro explain",
        "compression": "dvc repro compress",
        "gate": "dvc repro promote",
        "registry": "dvc repro promote",
        "served-model": "dvc repro package",
    }
    for section_id, advice in expected.items():
        assert advice in sections[section_id], (section_id, sections[section_id])
    assert "reports/gate.json is missing" in sections["gate"]
    assert "models/registry/registry.json is missing" in sections["registry"]
    assert "No drift check when this page was built" in sections["drift"]
    assert "No continual-learning decision when this page was built" in sections["continual"]


def test_a_missing_key_or_a_broken_file_is_named(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    evaluation = report_files()["evaluation.json"]
    del evaluation["test"]["per_class"]
    write_json(layout.evaluation_report, evaluation)
    layout.compress_report.write_text("{not json")
    write_json(layout.train_report, ["a list"])
    report = render_report(layout)
    sections = section_bodies(report.html)
    assert "test.per_class is not in reports/evaluation.json" in sections["metrics"]
    assert "reports/compress.json could not be read (JSONDecodeError" in sections["compression"]
    assert "reports/train.json holds a JSON list, not an object" in sections["learning-curves"]
    assert {section.id for section in report.incomplete} == {
        "metrics",
        "compression",
        "learning-curves",
    }


def test_a_disabled_search_is_said_and_not_missing(tmp_path: Path) -> None:
    layout = write_reports(
        tmp_path,
        skip=("tune/trials.csv", "tune/trials.png", "tune/best_so_far.png", "tune/dimensions.png"),
    )
    write_json(layout.tune_summary, {"enabled": False, "best_params": {"train.lr": 0.001}})
    report = render_report(layout)
    tuning = section_bodies(report.html)["tuning"]
    assert "The search is off" in tuning and "0.001" in tuning
    assert report.incomplete == ()


def test_a_method_name_cannot_reach_outside_the_explain_folder(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    (tmp_path / "secret.png").write_bytes(png(2, 2, (0, 0, 0)))
    summary = report_files()["explain/summary.json"]
    summary["methods"]["../../secret"] = summary["methods"].pop("lime")
    write_json(layout.explain_reports / "summary.json", summary)
    explanations = section_bodies(render_report(layout).html)["explanations"]
    assert "is not a safe file name" in explanations
    assert explanations.count("<img") == 2


def test_a_file_that_is_not_a_png_is_not_inlined(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    layout.curves_plot.write_text("<svg onload=alert(1)>")
    report = render_report(layout)
    curves = section_bodies(report.html)["learning-curves"]
    assert "<img" not in curves and "is not a readable PNG" in curves
    assert "onload" not in report.html


def test_the_stage_writes_the_page_and_says_so_in_one_line(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    environment = {"PYTHONPATH": str(REPO_ROOT)}
    environment["SOURCE_DATE_EPOCH"] = "1741064760"  # a fixed build time: the same bytes
    result = run([sys.executable, "-m", "tasks.report"], tmp_path, env=environment)
    assert re.fullmatch(r"report: reports/index\.html \(15 sections, \d+ KB\)\n", result.stdout)
    first = layout.html_report.read_bytes()
    run([sys.executable, "-m", "tasks.report"], tmp_path, env=environment)
    assert layout.html_report.read_bytes() == first  # same reports, same bytes (DVC-friendly)
    layout.gate_report.unlink()
    result = run([sys.executable, "-m", "tasks.report"], tmp_path, env=environment)
    assert result.stdout.strip().endswith("; incomplete: gate"), result.stdout


@pytest.mark.parametrize("argument", ["--show", "extra"])
def test_the_stage_takes_no_argument(tmp_path: Path, argument: str) -> None:
    write_reports(tmp_path)
    result = run(
        [sys.executable, "-m", "tasks.report", argument],
        tmp_path,
        check=False,
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 2 and "unknown argument" in result.stderr
    assert not Layout(tmp_path).html_report.exists()


def test_a_gate_without_a_champion_and_a_leak_are_shown(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    write_json(
        layout.gate_report,
        {
            "decision": "rejected",
            "reasons": ["too weak"],
            "candidate": {"id": "c1"},
            "champion": None,
        },
    )
    split = report_files()["data/split.json"]
    split["near_duplicate_pairs_across_splits"] = 3
    split["near_duplicate_examples"] = [
        {"a": "x<1>.png", "a_split": "train", "b": "y.png", "b_split": "test", "distance": 1},
    ]
    write_json(layout.split_report, split)
    sections = section_bodies(render_report(layout, FIXED).html)
    assert "No champion: the first model that meets the gate becomes it." in sections["gate"]
    assert (
        "3 near-duplicate pair(s) across splits (the first 1 shown): leakage"
        in (sections["split-leakage"])
    )
    assert "x&lt;1&gt;.png" in sections["split-leakage"]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a JSON value (the dict keys and list indexes to each node)."""
    if isinstance(value, dict):
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return []
    found = []
    for key, child in children:
        found += [(*prefix, key), *_paths(child, (*prefix, key))]
    return found


def _replaced(value: Any, path: tuple[Any, ...], junk: Any) -> Any:
    if not path:
        return junk
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], junk)
    return copy


JUNK = ("<junk>text", 7, -1.5, None, True, [1, "<junk>"], {"x": "<junk>"}, float("nan"))


def test_any_value_of_the_wrong_type_is_shown_not_a_crash(tmp_path: Path) -> None:
    # every node of every report, replaced in turn by a value of another type (cycling through
    # JUNK): the page is still built, and nothing from the files reaches it unescaped
    layout = write_reports(tmp_path)
    (tmp_path / "dvc.yaml").unlink()  # who writes what does not matter here; saves half the time
    files = {layout.reports_dir / name: content for name, content in report_files().items()}
    files[layout.registry_dir / "registry.json"] = registry_file()
    renders = 0
    for path, content in files.items():
        for index, key_path in enumerate(_paths(content)):
            write_json(path, _replaced(content, key_path, JUNK[index % len(JUNK)]))
            html = render_report(layout, FIXED).html
            assert "<junk" not in html, key_path
            renders += 1
        write_json(path, content)
    assert renders > 400


# --------------------------------------------------------------------------- which run it shows


def _git(root: Path, *arguments: str) -> None:
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *arguments], root)


def test_the_header_names_the_build_time_the_commit_and_the_params_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = write_reports(tmp_path)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "reports")
    head = run(["git", "rev-parse", "--short", "HEAD"], tmp_path).stdout.strip()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1741064760")  # 2025-03-04 05:06 UTC
    header = render_report(layout).html.split('<div class="headline">')[0]
    assert "built <b>2025-03-04 05:06 UTC</b>" in header
    assert f"commit <code>{head}</code>" in header and "uncommitted" not in header
    digest = run(["sha256sum", "params.yaml"], tmp_path).stdout.split()[0]
    assert f"params.yaml sha256 <code>{digest[:12]}</code>" in header

    # what `dvc repro` itself rewrites is not an uncommitted change: dvc.lock, declared
    # outputs (and files inside declared folders), the .gitignore files DVC keeps
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    write_json(layout.metrics_file, {"test": {}})
    (layout.registry_dir / "c9").mkdir()
    (layout.registry_dir / "c9" / "model.json").write_text("{}")
    (tmp_path / "models" / ".gitignore").write_text("/registry\n")
    write_json(layout.reports_dir / "drift_demo.json", {})  # reports/: what runs write
    header = render_report(layout).html.split('<div class="headline">')[0]
    assert "uncommitted" not in header

    (tmp_path / "params.yaml").write_text("seed: 2\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "new_stage.py").write_text("")  # untracked code counts too
    header = render_report(layout).html.split('<div class="headline">')[0]
    assert (
        f"commit <code>{head}</code> <b>+ uncommitted changes</b> "
        "(2 files: params.yaml, tasks/new_stage.py)"
    ) in header


def test_outside_git_or_without_git_the_header_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = write_reports(tmp_path)
    header = render_report(layout).html.split('<div class="headline">')[0]
    assert "commit unknown (not a git repository)" in header
    _git(tmp_path, "init", "-q")
    header = render_report(layout).html.split('<div class="headline">')[0]
    assert "commit unknown (no commit yet)" in header
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-folder"))
    commit = collect(layout, ()).commit
    assert commit == Commit(None, problem="git is not installed")
    (tmp_path / "params.yaml").unlink()
    header = render_report(layout).html.split('<div class="headline">')[0]
    assert "params.yaml could not be read" in header


def test_the_build_time_is_now_unless_source_date_epoch_fixes_it() -> None:
    assert build_time({"SOURCE_DATE_EPOCH": "0"}) == datetime(1970, 1, 1, tzinfo=UTC)
    before = datetime.now(UTC).replace(microsecond=0)
    for environment in ({}, {"SOURCE_DATE_EPOCH": "not a number"}):
        assert before <= build_time(environment) <= datetime.now(UTC)


# --------------------------------------------------------------------------- the search's end


def test_a_search_cut_by_its_hard_stop_says_so_beside_its_plan(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    summary = report_files()["tune/summary.json"]
    summary["trials"] = 5
    summary["budget"] |= {"trials": 10, "stopped_by_budget": True}
    write_json(layout.tune_summary, summary)
    tuning = section_bodies(render_report(layout, FIXED).html)["tuning"]
    assert "The search hit its hard stop</b>: Ray ended it after 1.62 min" in tuning
    assert "1.50 min budget" in tuning and "so 5 of the 10 planned trials ran" in tuning
    assert "<td>trials run</td><td>5 of 10 planned</td>" in tuning
    assert "Trials (5 of 10 planned; the chosen one highlighted)" in tuning

    summary["budget"]["stopped_by_budget"] = False
    summary["trials"] = 10
    write_json(layout.tune_summary, summary)
    tuning = section_bodies(render_report(layout, FIXED).html)["tuning"]
    assert "The search ran all its planned 10 trials: no hard stop." in tuning
    assert "hit its hard stop" not in tuning

    del summary["budget"]  # written by a tune stage from before the budget
    write_json(layout.tune_summary, summary)
    report = render_report(layout, FIXED)
    tuning = section_bodies(report.html)["tuning"]
    assert "budget.stopped_by_budget is not in reports/tune/summary.json" in tuning
    assert "dvc repro tune" in tuning and [s.id for s in report.incomplete] == ["tuning"]


# --------------------------------------------------------------------------- after the gate


def test_the_registry_names_the_test_set_of_every_accuracy(tmp_path: Path) -> None:
    registry = section_bodies(render_report(write_reports(tmp_path), FIXED).html)["registry"]
    rows = re.findall(r"<tr><td><code>(c\d)</code></td>(.*?)</tr>", registry)
    assert [identity for identity, _ in rows] == ["c3", "c2", "c1"]  # newest first
    cells = {identity: re.findall(r"<td[^>]*>(.*?)</td>", row) for identity, row in rows}
    assert cells["c1"][3] == cells["c2"][3] == "A (270 images)"  # the same test split
    assert cells["c3"][3] == "B (354 images)"  # its parent's test set and its batch's part
    assert "continual learning, batch <code>b7e1</code>" in cells["c3"][4]
    assert cells["c2"][2] == "50.00&nbsp;%" and ">rejected<" in cells["c2"][0]
    test_sets = registry.split("<h3>Test sets</h3>")[1].split("<h3>")[0]
    assert '<td>A</td><td class="num">270</td><td><code>111111111111</code></td>' in test_sets
    assert "the pipeline's test split, data version <code>dddddddddddd</code>" in test_sets
    assert (
        "test set A of <code>c1</code> + the test part of batch <code>b7e1</code> (84 images)"
        in test_sets
    )
    assert "comparable only between models measured on the same test set" in registry
    history = registry.split("<h3>History (7 events, newest first)</h3>")[1]
    assert history.index("<code>c3</code>") < history.index("accuracy 0.5000 &lt; 0.9")


def test_the_registry_shows_its_latest_events_and_counts_the_rest(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    registry = registry_file()
    registry["events"] *= 5  # 35 events
    write_json(layout.registry_dir / "registry.json", registry)
    section = section_bodies(render_report(layout, FIXED).html)["registry"]
    assert "History (35 events, newest first)" in section
    assert f"{35 - deployment_sections.MAX_EVENTS} earlier events are in" in section


def test_the_served_model_shows_the_bento_checks_and_latency(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    html = render_report(layout, FIXED).html
    served = section_bodies(html)["served-model"]
    assert 'Validation of the built bento: <span class="badge good">passed</span>' in served
    assert "sixfold-classifier:ffee01" in served and "12.3 / 56.8 ms" in served
    assert "Checks (3)" in served and "ready after 4.2 s" in served
    # continual learning promoted c3 and rebuilt the bento after this run's gate (champion c1)
    assert "built by continual learning when it promoted <code>c3</code>" in served
    headline = html.split('<nav id="contents">')[0]
    assert "the bento serves c3; this run&#x27;s gate left c1 the champion" in headline

    package = report_files()["package.json"] | {"champion": "c1"}
    write_json(layout.package_report, package)
    served = section_bodies(render_report(layout, FIXED).html)["served-model"]
    assert "The registry's champion is <code>c3</code>, but this bento serves" in served

    write_json(layout.package_report, {"skipped": "no champion to package <yet>"})
    served = section_bodies(render_report(layout, FIXED).html)["served-model"]
    assert "Nothing is served: no champion to package &lt;yet&gt;" in served


def test_drift_checks_are_shown_newest_first_with_where_they_come_from(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    write_json(  # a check without a verdict, newest: its tests are not the ones shown
        layout.reports_dir / "monitor" / "2025-03-03T100000Z.json",
        drift_check("2025-03-03T10:00:00+00:00", None) | {"tests": [], "plot": None},
    )
    report = render_report(layout, FIXED)
    drift = section_bodies(report.html)["drift"]
    assert "Written by the drift monitor (<code>make monitor</code>)" in drift
    assert "<code>make report</code>" in drift
    assert "3 checks in <code>reports/monitor/</code>, 1 with drift." in drift
    order = [drift.index(f"2025-03-0{day} 10:00 UTC") for day in (3, 2, 1)]
    assert order == sorted(order) and "state.json" not in drift
    assert ">no verdict<" in drift and ">no drift<" in drift
    tests = drift.split("Tests of the newest check with a verdict (2025-03-02 10:00 UTC)")[1]
    assert "ks: mean" in tests and "0.0001" in tests and "270 / 120" in tests
    assert "0.0007" in tests and "psi 0.8" in tests  # Holm's p and the effect size beside it
    assert "drift 1 of 2 in a row: continual learning not started yet" in tests
    assert "mean confidence 0.97 vs 0.98" in tests and "<img" in tests
    assert report.incomplete == ()


def test_continual_decisions_show_the_four_accuracies_and_when(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    folder = layout.reports_dir / "continual"
    late = continual_round("c0de", "c4", promoted=False) | {
        "bento_error": None,
        "reasons": ["forgetting 0.02 > continual.max_forgetting 0.01"],
    }
    write_json(folder / "c0de.json", late)  # not in the registry: its file's time is shown
    os.utime(folder / "c0de.json", (1741500000, 1741500000))  # 2025-03-09 06:00 UTC
    section = section_bodies(render_report(layout, FIXED).html)["continual"]
    assert "Written by continual learning" in section and "2 rounds, 1 promoted" in section
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", section)
    assert rows[0][0] == "2025-03-09 06:00 UTC <i>file</i>"  # newest first
    assert rows[1][0] == "2025-03-03 11:00 UTC"  # the registry's record of c3's promotion
    assert ">promoted<" in rows[1][1] and ">rejected<" in rows[0][1]
    assert "60.00&nbsp;% &rarr; 95.00&nbsp;% (84 images)" in rows[1][1]
    assert "98.70&nbsp;% &rarr; 98.30&nbsp;% (270 images)" in rows[1][1]
    assert "196 train + 84 test, 1 quarantined, 392 replayed" in rows[1][1]
    assert "forgetting 0.02 &gt; continual.max_forgetting" in rows[0][1]


def test_a_broken_flow_file_names_the_flow_not_a_stage(tmp_path: Path) -> None:
    layout = write_reports(tmp_path)
    (layout.reports_dir / "monitor" / "2025-03-01T100000Z.json").write_text("{half")
    write_json(layout.reports_dir / "continual" / "b7e1.json", ["a list"])
    report = render_report(layout, FIXED)
    sections = section_bodies(report.html)
    assert "reports/monitor/2025-03-01T100000Z.json could not be read" in sections["drift"]
    assert "the drift monitor writes it (<code>make monitor</code>)" in sections["drift"]
    assert "dvc repro" not in sections["drift"].split("Written by")[0]
    assert "reports/continual/b7e1.json holds a JSON list" in sections["continual"]
    assert {section.id for section in report.incomplete} == {"drift", "continual"}


def test_the_names_of_other_packages_files_agree_with_their_writers(tmp_path: Path) -> None:
    # tasks.reporting may not import the packages that write these files; it repeats the names
    from tasks.continual.report import report_file
    from tasks.monitoring.report import monitor_folder
    from tasks.monitoring.state import MONITOR_FOLDER, STATE_FILE
    from tasks.registry.store import REGISTRY_FILE, TEST_SET

    layout = Layout(tmp_path)
    assert inputs.REGISTRY_FILE == REGISTRY_FILE and deployment_sections.TEST_SET_FILE == TEST_SET
    assert (inputs.MONITOR_FOLDER, inputs.MONITOR_STATE) == (MONITOR_FOLDER, STATE_FILE)
    assert monitor_folder(layout.reports_dir) == layout.reports_dir / inputs.MONITOR_FOLDER
    folder = layout.reports_dir / inputs.CONTINUAL_FOLDER
    assert report_file(layout, "v1") == folder / "v1.json"
