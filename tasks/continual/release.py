"""The challenger as the registry keeps a model: weights, card, ONNX fp32 and int8, and an entry.

Exported and quantized as the compress stage does it (`tasks.compression`: the same export, the
same fp32 check against torch within `compress.atol`, int8 calibrated on
`compress.calibration_images` seeded images of what it trained on, served only if within
`compress.max_accuracy_drop` of torch on its test set: `choose_served`). Registered through
`record_decision` like the promote stage's candidates, with its lineage: parent = the champion,
data_version = the batch's version, and `lineage` (kind continual, batch, source, counts). Its
registered test set is the old test split followed by the batch's test part, so the models that
come after it are judged on both.
"""

from __future__ import annotations

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
from tasks.compression.report import FP32_FILE, INT8_FILE, ModelFigures, ServedName, choose_served
from tasks.compression.runtime import OnnxClassifier, resolve_threads
from tasks.core.config import Params
from tasks.data.packed import Split
from tasks.modeling.artifact import CARD_FILE, WEIGHTS_FILE, ModelCard, save_model
from tasks.registry.store import (
    SERVED_FILES,
    Candidate,
    Lineage,
    Registry,
    candidate_id,
    record_decision,
    store_files,
)

BATCH_SIZES = (1, 32)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else 0.0


def export_challenger(
    network: nn.Module,
    card: ModelCard,
    folder: Path,
    train_images: np.ndarray,
    test: Split,
    params: Params,
) -> tuple[ServedName, str]:
    """Write the weights, card and both ONNX files into `folder`; which one is served, and why."""
    config = params.compress
    threads = resolve_threads(config.threads)
    save_model(network, card, folder)
    onnx_dir = folder / "onnx"
    fp32_path = export_onnx(network, card, onnx_dir / FP32_FILE)
    test_x, test_y = test
    module = classifier_module(network, card)
    with torch_threads(threads):
        reference = torch_probabilities(module, test_x)
    fp32 = OnnxClassifier(fp32_path, threads)
    fp32_probabilities = fp32.probabilities(test_x)
    check_matches(reference, fp32_probabilities, config.atol, f"ONNX fp32 ({FP32_FILE})")
    calibration = calibration_sample(train_images, config.calibration_images, params.seed)
    int8 = OnnxClassifier(quantize_int8(fp32_path, onnx_dir / INT8_FILE, calibration), threads)
    runners = {"torch_fp32": torch_runner(module), "onnx_fp32": fp32.run, "onnx_int8": int8.run}
    with torch_threads(threads):
        latency = {
            size: latency_ms_per_image(runners, test_x, size, config.latency_repeats)
            for size in BATCH_SIZES
        }
    scores = {
        "torch_fp32": reference,
        "onnx_fp32": fp32_probabilities,
        "onnx_int8": int8.probabilities(test_x),
    }
    sizes = {
        "torch_fp32": folder / WEIGHTS_FILE,
        "onnx_fp32": fp32_path,
        "onnx_int8": onnx_dir / INT8_FILE,
    }
    models = {
        name: ModelFigures(
            accuracy=accuracy(scores[name], test_y),
            size_mb=sizes[name].stat().st_size / 1e6,
            latency_ms_b1=latency[1][name],
            latency_ms_b32=latency[32][name],
        )
        for name in runners
    }
    return choose_served(models, config.max_accuracy_drop)


def register(
    registry: Registry,
    folder: Path,
    registry_dir: Path,
    entry: tuple[ServedName, Split, dict[str, float]],
    parent: str,
    lineage: Lineage,
    decision: tuple[bool, list[str]],
    time: str,
) -> tuple[Registry, Candidate]:
    """The registry after the decision about the challenger in `folder`, and its entry.

    `entry`: the served format, the registered test set (old test split + the batch's test
    part) and the accuracies the report shows (`accuracy` is the one on that whole set).
    """
    served, test_set, metrics = entry
    identity = candidate_id(folder / WEIGHTS_FILE, folder / CARD_FILE)
    card = ModelCard.load(folder / CARD_FILE)
    candidate = registry.entry(identity)
    if candidate is None:
        candidate = Candidate(
            id=identity,
            created=time,
            files=store_files(registry_dir, identity, folder, folder / "onnx", test_set),
            served_format=served,
            served_file=f"onnx/{SERVED_FILES[served]}",
            accuracy=metrics["accuracy"],
            test_metrics=metrics,
            baseline=None,
            data_version=lineage.batch,
            test_images=len(test_set[1]),
            params_hash=card.params_fingerprint,
            parent=parent,
            status="rejected",
            reasons=[],
            lineage=lineage,
        )
    promoted, reasons = decision
    return record_decision(registry, candidate, promoted, reasons, time), candidate
