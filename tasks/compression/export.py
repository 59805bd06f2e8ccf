"""The trained network with the shared preprocessing, exported to one ONNX file.

The graph takes the packed uint8 pixels (N, C, H, W), any N, and returns softmax class
probabilities (output 0) and the network's embedding (output 1, the input of the classification
head as `tasks.modeling.embedding` defines it, which the service logs for the drift monitor):
scaling and normalization are inside it (the card's `Preprocessing`, the module training used),
so a caller of the ONNX file cannot normalize differently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from tasks.compression.report import EMBEDDING_OUTPUT, INPUT_NAME, OUTPUT_NAME
from tasks.core.errors import UserError
from tasks.modeling.artifact import ModelCard
from tasks.modeling.embedding import EmbeddingNetwork
from tasks.modeling.preprocessing import Preprocessing

OPSET = 20  # onnxruntime 1.32 runs it; QDQ per-channel quantization needs >= 13


def classifier_module(network: nn.Module, card: ModelCard) -> nn.Module:
    """uint8 images -> probabilities: preprocessing, the network, softmax (eval mode)."""
    return nn.Sequential(card.preprocessing(), network, nn.Softmax(dim=1)).eval()


class ExportedClassifier(nn.Module):
    """uint8 images -> (probabilities, embedding): what the ONNX file computes (eval mode)."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.network = EmbeddingNetwork(network)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.network(self.preprocessing(images))
        return torch.softmax(logits, dim=1), embedding


def exported_module(network: nn.Module, card: ModelCard) -> ExportedClassifier:
    """The module the export traces: `classifier_module`'s probabilities and the embedding."""
    return ExportedClassifier(network, card.preprocessing()).eval()


def write_metadata(path: Path, card: ModelCard) -> None:
    """Store what a caller needs besides the graph (classes, image size, channels) in the file.

    `tasks.compression.runtime.OnnxClassifier` reads them; the int8 file gets a copy.
    """
    model = onnx.load(str(path))
    values = {
        "classes": json.dumps(card.classes),
        "image_size": str(card.image_size),
        "channels": str(card.channels),
        "arch": card.arch,
        "output": OUTPUT_NAME,
    }
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(path))


def export_onnx(network: nn.Module, card: ModelCard, path: Path) -> Path:
    """Export `network` with its preprocessing to `path`: one file, dynamic batch dimension (of
    the input and of both outputs, probabilities and embedding).

    torch 2.14's exporter traces with torch.export (dynamo) and writes through onnxscript; its
    optimizer folds batch normalization into the convolutions.
    """
    module = exported_module(network, card)
    example = torch.zeros((2, card.channels, card.image_size, card.image_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME, EMBEDDING_OUTPUT],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        optimize=True,
        verbose=False,  # no line per export step
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program (dynamo=True should)")
    program.save(str(path), external_data=False)  # weights inside: one file for DVC to track
    write_metadata(path, card)
    return path


def torch_probabilities(module: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """What the exported graph computes, computed by torch (the reference of the checks)."""
    with torch.inference_mode():
        parts = [
            module(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
            for start in range(0, len(images), batch_size)
        ]
    return torch.cat(parts).numpy()


def check_matches(
    reference: np.ndarray,
    exported: np.ndarray,
    atol: float,
    what: str,
    quantity: str = "probabilities",
) -> float:
    """The largest absolute difference; UserError when it exceeds `atol` (compress.atol).

    `quantity` names the output compared (probabilities, embeddings) in the message."""
    if reference.shape != exported.shape:
        raise UserError(
            f"compress: {what} gives outputs of shape {exported.shape}, torch {reference.shape}"
        )
    difference = float(np.abs(reference - exported).max()) if reference.size else 0.0
    if not difference <= atol:
        raise UserError(
            f"compress: {what} {quantity} differ from torch's by up to {difference:.3g} on "
            f"the test images, more than compress.atol = {atol:g}; the export is not faithful "
            "(an operator the exporter translates differently?), so nothing is served from it"
        )
    return difference
