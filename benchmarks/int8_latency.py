"""int8_latency: the int8 ONNX model against the torch fp32 model, batch 32, same threads.

Run with ``python -m benchmarks.int8_latency`` (after ``make run``). Times the shipped model's
torch fp32 network as a competent user runs it (eval mode, under `torch.inference_mode`, the
shared preprocessing included, `compress.threads` threads) against `models/onnx/model.int8.onnx`
(onnxruntime, the same threads), both on batches of 32 test images, in turns in one process
(`tasks.compression.latency`). When the compress stage has not run, the benchmark exports and
quantizes the model itself, into a temporary folder, with the stage's library code. Writes
reports/bench/int8_latency.json; targets: int8 latency per image at most 0.6x torch fp32's, and
an int8 test accuracy at most `compress.max_accuracy_drop` below torch's (issue 10).
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

from benchmarks.common import LAYOUT, Check, finish
from tasks.compression.export import classifier_module, export_onnx, torch_probabilities
from tasks.compression.latency import latency_ms_per_image, torch_runner, torch_threads
from tasks.compression.quantize import calibration_sample, quantize_int8
from tasks.compression.report import FP32_FILE, INT8_FILE, CompressReport
from tasks.compression.runtime import OnnxClassifier, resolve_threads
from tasks.core.config import load_params
from tasks.data.packed import load_split
from tasks.modeling.artifact import load_model

BATCH = 32
REPEATS = (
    60  # timed runs per model (the median is reported): more than the stage, for a steadier ratio
)
TARGET_RATIO = 0.6


def int8_model(folder: Path) -> tuple[Path, str]:
    """The compress stage's int8 file, or one made here in `folder` when the stage has not run."""
    stage_file = LAYOUT.onnx_dir / INT8_FILE
    if stage_file.exists():
        return stage_file, "models/onnx (the compress stage)"
    params = load_params(LAYOUT.params_file)
    network, card = load_model(LAYOUT.models_dir)
    train_x, _ = load_split("train", LAYOUT.packed_dir)
    calibration = calibration_sample(train_x, params.compress.calibration_images, params.seed)
    fp32 = export_onnx(network, card, folder / FP32_FILE)
    return quantize_int8(fp32, folder / INT8_FILE, calibration), "exported by this benchmark"


def main() -> None:
    params = load_params(LAYOUT.params_file)
    threads = resolve_threads(params.compress.threads)
    network, card = load_model(LAYOUT.models_dir)
    module = classifier_module(network, card)
    test_x, test_y = load_split("test", LAYOUT.packed_dir)
    with tempfile.TemporaryDirectory() as folder:
        path, source = int8_model(Path(folder))
        int8 = OnnxClassifier(path, threads)
        with torch_threads(threads):
            torch_accuracy = float((torch_probabilities(module, test_x).argmax(1) == test_y).mean())
            latency = latency_ms_per_image(
                {"torch_fp32": torch_runner(module), "onnx_int8": int8.run}, test_x, BATCH, REPEATS
            )
        int8_accuracy = float((int8.predict(test_x) == test_y).mean())
    ratio = latency["onnx_int8"] / latency["torch_fp32"]
    drop = torch_accuracy - int8_accuracy
    served = (
        CompressReport.load(LAYOUT.compress_report).served
        if LAYOUT.compress_report.exists()
        else "unknown (the compress stage has not run)"
    )
    finish(
        "int8_latency",
        {
            "torch_fp32_ms_per_image": latency["torch_fp32"],
            "onnx_int8_ms_per_image": latency["onnx_int8"],
            "ratio": ratio,
            "torch_fp32_accuracy": torch_accuracy,
            "onnx_int8_accuracy": int8_accuracy,
            "accuracy_drop": drop,
            "batch": BATCH,
            "threads": threads,
            "repeats": REPEATS,
            "int8_model": source,
            "served": served,
            "arch": card.arch,
            "machine": platform.machine(),
        },
        [
            Check("ratio", ratio, "<=", TARGET_RATIO),
            Check("accuracy_drop", drop, "<=", params.compress.max_accuracy_drop),
        ],
    )


if __name__ == "__main__":
    main()
