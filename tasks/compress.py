"""compress: the trained model as ONNX (fp32) and static int8 ONNX, served only if int8 is accurate.

Run on its own with ``python -m tasks.compress`` (after train).

Exports the network with the shared preprocessing (uint8 images in, softmax probabilities and
the embedding out) to `models/onnx/model.onnx` and checks both outputs against torch on the test
split (`compress.atol`); quantizes it to `models/onnx/model.int8.onnx` (onnxruntime static QDQ,
calibrated on `compress.calibration_images` seeded train images); then scores and times torch
fp32, ONNX fp32 and ONNX int8 in one run with the same threads (`compress.threads`). int8 is
served only if its test accuracy is at most `compress.max_accuracy_drop` below torch's. The work
is `tasks.compression.compressor.compress_model`, which continual learning's export calls too
(one export path). Writes `reports/compress.json`
(:class:`~tasks.compression.report.CompressReport`).
"""

from __future__ import annotations

import importlib.metadata
import sys
import time

from tasks.compression.compressor import compress_model
from tasks.compression.report import ONNX_FILES, CompressReport
from tasks.core.config import Params, load_params_or_exit
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.packed import load_split
from tasks.modeling.artifact import WEIGHTS_FILE, load_model


def compress(params: Params, layout: Layout | None = None) -> CompressReport:
    """Export, check, quantize, score and time; write the ONNX files and reports/compress.json."""
    layout = layout or Layout.discover()
    config = params.compress
    network, card = load_model(layout.models_dir)
    test = load_split("test", layout.packed_dir)
    train_x, _ = load_split("train", layout.packed_dir)
    weights = layout.models_dir / WEIGHTS_FILE
    result = compress_model(
        network, card, weights, layout.onnx_dir, test, train_x, config, params.seed
    )
    models, served = result.models, result.served
    report = CompressReport.create(
        models=models,
        served=served,
        served_file=ONNX_FILES[served],
        reason=result.reason,
        accuracy_drop=models["torch_fp32"].accuracy - models["onnx_int8"].accuracy,
        latency_ratio_b32=models[served].latency_ms_b32 / models["torch_fp32"].latency_ms_b32,
        max_abs_difference=result.max_abs_difference,
        atol=config.atol,
        threads=result.threads,
        latency_repeats=config.latency_repeats,
        calibration_images=result.calibration_images,
        test_images=len(test[1]),
        versions={
            package: importlib.metadata.version(package)
            for package in ("torch", "onnx", "onnxruntime", "onnxscript")
        },
    )
    report.save(layout.compress_report)
    return report


def summary_line(report: CompressReport) -> str:
    served = report.models[report.served]
    change = served.accuracy - report.models["torch_fp32"].accuracy + 0.0  # never "-0.0000"
    return (
        f"compress: serving {report.served} (accuracy {served.accuracy:.4f}, "
        f"{change:+.4f} vs torch fp32; "
        f"batch-32 latency {served.latency_ms_b32:.3f} ms/image = "
        f"{report.latency_ratio_b32:.2f}x torch fp32; {report.threads} thread(s))"
    )


def main() -> None:
    layout = Layout.discover()
    if sys.argv[1:] == ["--show"]:  # print the last run's result without recomputing
        print(summary_line(CompressReport.load(layout.compress_report)))
        return
    params = load_params_or_exit(layout.params_file)
    start = time.perf_counter()
    report = compress(params, layout)
    print(f"{summary_line(report)} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    stage_main(
        main, options={"--show": "print the last result (reports/compress.json); compute nothing"}
    )
