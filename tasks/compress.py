"""compress: the trained model as ONNX (fp32) and static int8 ONNX, served only if int8 is accurate.

Run on its own with ``python -m tasks.compress`` (after train).

Exports the network with the shared preprocessing (uint8 images in, softmax probabilities out)
to `models/onnx/model.onnx` and checks it against torch on the test split (`compress.atol`);
quantizes it to `models/onnx/model.int8.onnx` (onnxruntime static QDQ, calibrated on
`compress.calibration_images` seeded train images); then scores and times torch fp32, ONNX fp32
and ONNX int8 in one run with the same threads (`compress.threads`). int8 is served only if its
test accuracy is at most `compress.max_accuracy_drop` below torch's. Writes
`reports/compress.json` (:class:`~tasks.compression.report.CompressReport`).
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path

import numpy as np
from torch import nn

from tasks.compression.export import (
    check_matches,
    classifier_module,
    export_onnx,
    torch_probabilities,
)
from tasks.compression.latency import latency_ms_per_image, torch_runner, torch_threads
from tasks.compression.quantize import calibration_sample, quantize_int8
from tasks.compression.report import (
    FP32_FILE,
    INT8_FILE,
    ONNX_FILES,
    CompressReport,
    ModelFigures,
    choose_served,
)
from tasks.compression.runtime import OnnxClassifier, resolve_threads
from tasks.core.config import Params, load_params_or_exit
from tasks.core.layout import Layout
from tasks.core.runner import stage_main
from tasks.data.packed import load_split
from tasks.modeling.artifact import WEIGHTS_FILE, load_model
from tasks.modeling.embedding import embed

BATCH_SIZES = (1, 32)


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def measure(
    module: nn.Module, onnx_dir: Path, images: np.ndarray, threads: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Latency per image of the three models at each batch size, timed in turns in one run."""
    sessions = {name: OnnxClassifier(onnx_dir / ONNX_FILES[name], threads) for name in ONNX_FILES}
    runners = {"torch_fp32": torch_runner(module)}
    runners |= {name: session.run for name, session in sessions.items()}
    with torch_threads(threads):
        by_batch = {
            batch: latency_ms_per_image(runners, images, batch, repeats) for batch in BATCH_SIZES
        }
    return {name: {f"latency_ms_b{b}": by_batch[b][name] for b in BATCH_SIZES} for name in runners}


def compress(params: Params, layout: Layout | None = None) -> CompressReport:
    """Export, check, quantize, score and time; write the ONNX files and reports/compress.json."""
    layout = layout or Layout.discover()
    config = params.compress
    threads = resolve_threads(config.threads)
    network, card = load_model(layout.models_dir)
    test_x, test_y = load_split("test", layout.packed_dir)
    train_x, _ = load_split("train", layout.packed_dir)
    module = classifier_module(network, card)
    fp32_path = export_onnx(network, card, layout.onnx_dir / FP32_FILE)

    with torch_threads(threads):
        reference = torch_probabilities(module, test_x)
        torch_embeddings, _ = embed(network, card.preprocessing(), test_x)
    fp32, fp32_embeddings = OnnxClassifier(fp32_path, threads).outputs(test_x)
    difference = check_matches(reference, fp32, config.atol, f"ONNX fp32 ({FP32_FILE})")
    # the embedding output feeds the drift monitor's MMD test: it must be the network's too
    check_matches(
        torch_embeddings, fp32_embeddings, config.atol, f"ONNX fp32 ({FP32_FILE})", "embeddings"
    )

    calibration = calibration_sample(train_x, config.calibration_images, params.seed)
    int8_path = quantize_int8(fp32_path, layout.onnx_dir / INT8_FILE, calibration)
    int8 = OnnxClassifier(int8_path, threads).probabilities(test_x)

    latency = measure(module, layout.onnx_dir, test_x, threads, config.latency_repeats)
    scores = {"torch_fp32": reference, "onnx_fp32": fp32, "onnx_int8": int8}
    sizes = {
        "torch_fp32": size_mb(layout.models_dir / WEIGHTS_FILE),
        "onnx_fp32": size_mb(fp32_path),
        "onnx_int8": size_mb(int8_path),
    }
    models = {
        name: ModelFigures(
            accuracy=accuracy(scores[name], test_y), size_mb=sizes[name], **latency[name]
        )
        for name in scores
    }
    served, reason = choose_served(models, config.max_accuracy_drop)
    report = CompressReport.create(
        models=models,
        served=served,
        served_file=ONNX_FILES[served],
        reason=reason,
        accuracy_drop=models["torch_fp32"].accuracy - models["onnx_int8"].accuracy,
        latency_ratio_b32=models[served].latency_ms_b32 / models["torch_fp32"].latency_ms_b32,
        max_abs_difference=difference,
        atol=config.atol,
        threads=threads,
        latency_repeats=config.latency_repeats,
        calibration_images=len(calibration),
        test_images=len(test_y),
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
