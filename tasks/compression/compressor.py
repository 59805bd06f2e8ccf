"""One export path: a trained network -> ONNX fp32 and int8 files, checked against torch, scored,
timed, and the choice of the served file. The compress stage (`tasks/compress.py`) runs it on the
pipeline's model; continual learning (`tasks.continual.release`) on its challenger, so both
models reach the registry through the same checks.

Steps: export with the shared preprocessing (`export_onnx`); the fp32 file's probabilities and
embeddings must match torch's on the test images within `compress.atol` (the embedding output
feeds the drift monitor's MMD test: it must be the network's too); quantize to static int8,
calibrated on `compress.calibration_images` seeded train images; score torch fp32, ONNX fp32 and
ONNX int8 on the test images and time them in turns with the same threads
(`compress.threads`); serve int8 only if its accuracy is at most `compress.max_accuracy_drop`
below torch's (`choose_served`).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    ModelFigures,
    ModelName,
    ServedName,
    choose_served,
)
from tasks.compression.runtime import OnnxClassifier, resolve_threads
from tasks.core.config import CompressConfig
from tasks.modeling.artifact import ModelCard
from tasks.modeling.embedding import embed

BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class Compressed:
    """What :func:`compress_model` wrote and measured: every model's figures, the served file
    and why, the largest fp32-vs-torch probability difference, and the settings used."""

    models: dict[ModelName, ModelFigures]
    served: ServedName
    reason: str
    max_abs_difference: float
    threads: int
    calibration_images: int


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


def compress_model(
    network: nn.Module,
    card: ModelCard,
    weights: Path,
    onnx_dir: Path,
    test: tuple[np.ndarray, np.ndarray],
    train_images: np.ndarray,
    config: CompressConfig,
    seed: int,
) -> Compressed:
    """Export `network` into `onnx_dir` (model.onnx, model.int8.onnx), check, score, time and
    choose (module doc). `weights`: its safetensors file (the torch model's size). Raises
    UserError when the fp32 file's probabilities or embeddings differ from torch's."""
    threads = resolve_threads(config.threads)
    test_x, test_y = test
    module = classifier_module(network, card)
    fp32_path = export_onnx(network, card, onnx_dir / FP32_FILE)

    with torch_threads(threads):
        reference = torch_probabilities(module, test_x)
        torch_embeddings, _ = embed(network, card.preprocessing(), test_x)
    fp32, fp32_embeddings = OnnxClassifier(fp32_path, threads).outputs(test_x)
    difference = check_matches(reference, fp32, config.atol, f"ONNX fp32 ({FP32_FILE})")
    check_matches(
        torch_embeddings, fp32_embeddings, config.atol, f"ONNX fp32 ({FP32_FILE})", "embeddings"
    )

    calibration = calibration_sample(train_images, config.calibration_images, seed)
    int8_path = quantize_int8(fp32_path, onnx_dir / INT8_FILE, calibration)
    int8 = OnnxClassifier(int8_path, threads).probabilities(test_x)

    latency = measure(module, onnx_dir, test_x, threads, config.latency_repeats)
    scores: dict[ModelName, np.ndarray] = {
        "torch_fp32": reference,
        "onnx_fp32": fp32,
        "onnx_int8": int8,
    }
    sizes = {"torch_fp32": weights, "onnx_fp32": fp32_path, "onnx_int8": int8_path}
    models = {
        name: ModelFigures(
            accuracy=accuracy(scores[name], test_y), size_mb=size_mb(sizes[name]), **latency[name]
        )
        for name in scores
    }
    served, reason = choose_served(models, config.max_accuracy_drop)
    return Compressed(models, served, reason, difference, threads, len(calibration))
