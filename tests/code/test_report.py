"""The HTML report (`python -m tasks.report`), built from report files each test writes itself.

The files follow the schemas the stages write (reports/metrics.json, evaluation.json,
explain/summary.json, compress.json, gate.json, ...), with class labels that hold HTML
(`<script>`, `&`) to prove every value is escaped. `write_reports` is also what the browser test
(tests/system/test_report_browser.py) renders.
"""

from __future__ import annotations

import re
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from tasks.core.io import write_json
from tasks.core.layout import Layout
from tasks.reporting.build import SECTION_IDS, render_report
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
    }


def write_reports(root: Path, skip: tuple[str, ...] = ()) -> Layout:
    """A repository folder at `root` with dvc.yaml and every report but those in `skip`."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")  # who writes what, for the notes
    (root / "params.yaml").write_text("seed: 1\n")
    layout = Layout(root)
    for name, content in report_files().items():
        if name not in skip:
            write_json(layout.reports_dir / name, content)
    trials = layout.tune_reports / "trials.csv"
    if "tune/trials.csv" not in skip:
        trials.write_text(
            "config/train.lr,trial_id,best_val_acc,status\n"
            "0.003,aaa111,0.99,finished\n0.0001,bbb222,0.95,finished\n"
        )
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
    report = render_report(write_reports(tmp_path))
    sections = section_bodies(report.html)
    assert tuple(sections) == SECTION_IDS
    assert len(SECTION_IDS) == 11 and report.incomplete == ()
    assert 'class="note missing"' not in report.html
    sources = re.findall(r'<img src="([^"]+)"', report.html)
    assert len(sources) == len(FIGURES)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    # offline: nothing fetched, nothing run
    assert not re.search(r'(src|href)="(?!data:|#)', report.html), "an external reference"
    assert "<script" not in report.html
    for section_id in SECTION_IDS:  # the contents link every section
        assert f'href="#{section_id}"' in report.html


def test_the_headline_and_the_sections_show_the_figures(tmp_path: Path) -> None:
    html = render_report(write_reports(tmp_path)).html
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
    html = render_report(write_reports(tmp_path)).html
    assert "<script" not in html and "alert(1)</" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&amp;b" in html and "&lt;sic&gt;" in html and "&amp; 2.5x faster" in html


def test_missing_reports_say_which_stage_writes_them(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    report = render_report(layout)  # no report at all: a page, not a crash
    sections = section_bodies(report.html)
    assert tuple(sections) == SECTION_IDS and len(report.incomplete) == len(SECTION_IDS)
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
    }
    for section_id, advice in expected.items():
        assert advice in sections[section_id], (section_id, sections[section_id])
    assert "reports/gate.json is missing" in sections["gate"]


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
    result = run([sys.executable, "-m", "tasks.report"], tmp_path, env=environment)
    assert re.fullmatch(r"report: reports/index\.html \(11 sections, \d+ KB\)\n", result.stdout)
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
    sections = section_bodies(render_report(layout).html)
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
    renders = 0
    for name, content in report_files().items():
        path = layout.reports_dir / name
        for index, key_path in enumerate(_paths(content)):
            write_json(path, _replaced(content, key_path, JUNK[index % len(JUNK)]))
            html = render_report(layout).html
            assert "<junk" not in html, key_path
            renders += 1
        write_json(path, content)
    assert renders > 150
