"""The compressed digits model (after `dvc repro` ran the compress stage): int8 keeps the accuracy,
the ONNX files compute what the torch model computes, and the report tells the truth about them.

Latency is not asserted here (house rule: performance is a benchmark's ratio,
`python -m benchmarks.int8_latency`, not a timed test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.compression.report import FP32_FILE, ONNX_FILES, CompressReport, served_model_path
from tasks.compression.runtime import OnnxClassifier
from tasks.core.config import load_params
from tasks.core.layout import Layout
from tasks.data.packed import load_split
from tasks.modeling.artifact import load_model, predict
from tasks.modeling.embedding import embed

pytestmark = pytest.mark.slow


def test_int8_is_served_and_keeps_the_accuracy_on_the_digits(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    limit = load_params(layout.params_file).compress.max_accuracy_drop
    report = CompressReport.load(layout.compress_report)
    assert report.accuracy_drop <= limit, report.reason
    assert report.served == "onnx_int8", report.reason
    assert (
        served_model_path(layout.onnx_dir, layout.compress_report).name == ONNX_FILES["onnx_int8"]
    )


def test_the_onnx_models_compute_what_the_torch_model_computes(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    report = CompressReport.load(layout.compress_report)
    network, card = load_model(layout.models_dir)
    test_x, _ = load_split("test", layout.packed_dir)
    expected = predict(network, card.preprocessing(), test_x)  # evaluate's own torch path
    fp32 = OnnxClassifier(layout.onnx_dir / FP32_FILE).probabilities(test_x)
    assert np.abs(fp32 - expected).max() <= report.atol
    served = OnnxClassifier(served_model_path(layout.onnx_dir, layout.compress_report))
    agreement = (served.predict(test_x) == expected.argmax(axis=1)).mean()
    assert agreement >= 0.99, f"the served model agrees with torch on {agreement:.1%} of images"
    assert served.classes == card.classes


def test_both_onnx_models_give_the_networks_embedding(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    report = CompressReport.load(layout.compress_report)
    network, card = load_model(layout.models_dir)
    test_x, _ = load_split("test", layout.packed_dir)
    expected, _ = embed(network, card.preprocessing(), test_x)  # the monitor's definition
    _, fp32 = OnnxClassifier(layout.onnx_dir / FP32_FILE).outputs(test_x)
    assert fp32.shape == expected.shape and np.abs(fp32 - expected).max() <= report.atol
    served = OnnxClassifier(served_model_path(layout.onnx_dir, layout.compress_report))
    _, quantized = served.outputs(test_x)
    # int8 steps (measured: within 0.047 on values up to 4.3)
    assert np.abs(quantized - expected).max() <= 0.05 * np.abs(expected).max()


def test_the_report_matches_the_files(trained_repo: Path) -> None:
    layout = Layout(trained_repo)
    report = CompressReport.load(layout.compress_report)
    test_x, test_y = load_split("test", layout.packed_dir)
    for name, file in ONNX_FILES.items():
        path = layout.onnx_dir / file
        figures = report.models[name]
        assert figures.size_mb == pytest.approx(path.stat().st_size / 1e6)
        accuracy = (OnnxClassifier(path, report.threads).predict(test_x) == test_y).mean()
        assert figures.accuracy == pytest.approx(accuracy)  # same threads, same result
    assert report.test_images == len(test_y)
