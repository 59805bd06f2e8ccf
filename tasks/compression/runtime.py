"""The ONNX classifier that promotion, benchmarks and the BentoML service all call.

Torch-free (numpy and onnxruntime only), so the service does not need torch. The model file
carries what a caller needs besides the graph (its classes, image size and channels) in its
metadata, which the compress stage writes (`tasks.compression.export.write_metadata`).

A file exported since the drift monitor's embeddings also returns the network's embedding
(output `embedding`); `OnnxClassifier.outputs` fetches it, `OnnxClassifier.probabilities` does
not (onnxruntime computes the embedding either way, as the head's input, but only copies out the
outputs asked for). Older files, which a registry may hold, have the probabilities only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tasks.compression.report import EMBEDDING_OUTPUT
from tasks.core.errors import UserError, require, shown

# batches of images per session run when scoring a whole split: bounds memory, not speed
SCORING_BATCH = 256


def resolve_threads(threads: int | None) -> int:
    """`threads`, or every core this process may use when None (`compress.threads: null`)."""
    if threads is not None:
        return threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def session_options(threads: int | None) -> ort.SessionOptions:
    """One intra-op pool of `threads`, sequential execution, every graph optimization.

    The same settings time the models in the compress stage and serve them, so the latency in
    reports/compress.json is the latency a service sees. (Measured on the digits CNN: ORT's
    default level, ORT_ENABLE_ALL, fuses Conv+Relu and folds the Q/DQ pairs into integer kernels.)
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = resolve_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are about its own internals
    return options


class OnnxClassifier:
    """An exported sixfold model (fp32 or int8): uint8 (N, C, H, W) images -> probabilities
    (and embeddings, when the file has that output)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require(path)
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        names = [output.name for output in self.session.get_outputs()]
        self.output_names = [names[0]]  # the probabilities
        # None: a file exported before the embedding output
        self.embedding_name = EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in names[1:] else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.classes: list[str] = json.loads(metadata.get("classes", "[]"))
        self.image_size = int(metadata.get("image_size", 0)) or None
        self.channels = int(metadata.get("channels", 0)) or None

    def expected_shape(self) -> str:
        return f"(N, {self.channels}, {self.image_size}, {self.image_size})"

    def check_images(self, images: np.ndarray) -> None:
        """Raise UserError naming the problem unless `images` is what the model takes."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise UserError(
                f"{shown(self.path)} takes uint8 images {self.expected_shape()}, got {found}; "
                "pass the packed pixels (0-255), not normalized floats"
            )
        wanted = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or (self.channels is not None and tuple(images.shape[1:]) != wanted):
            raise UserError(
                f"{shown(self.path)} takes uint8 images {self.expected_shape()}, got shape "
                f"{tuple(images.shape)}; preprocess them with the model's Preprocessing.pixels"
            )

    @property
    def embedding_size(self) -> int | None:
        """The embedding's length (None: no embedding output, or a length unknown until run)."""
        if self.embedding_name is None:
            return None
        output = next(o for o in self.session.get_outputs() if o.name == self.embedding_name)
        size = output.shape[-1] if output.shape else None
        return size if isinstance(size, int) else None

    def run(self, images: np.ndarray) -> np.ndarray:
        """One session run on one batch, unchecked (what the latency measurement times)."""
        return self.session.run(self.output_names, {self.input_name: images})[0]

    def run_with_embeddings(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One session run on one batch, unchecked: probabilities and embeddings (None when the
        file has no embedding output)."""
        if self.embedding_name is None:
            return self.run(images), None
        probabilities, embeddings = self.session.run(
            [*self.output_names, self.embedding_name], {self.input_name: images}
        )
        return probabilities, embeddings

    def probabilities(self, images: np.ndarray, batch_size: int = SCORING_BATCH) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 (N, C, H, W) images, run in batches."""
        self.check_images(images)
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if len(images) <= batch_size:
            return self.run(np.ascontiguousarray(images))
        parts = [
            self.run(np.ascontiguousarray(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)

    def outputs(
        self, images: np.ndarray, batch_size: int = SCORING_BATCH
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, classes) and embeddings (N, D) of uint8 (N, C, H, W) images,
        run in batches; the embeddings are None when the file has no embedding output."""
        self.check_images(images)
        if len(images) == 0:
            empty = np.zeros((0, len(self.classes)), dtype=np.float32)
            size = self.embedding_size or 0
            return empty, None if self.embedding_name is None else np.zeros((0, size), np.float32)
        parts = [
            self.run_with_embeddings(np.ascontiguousarray(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        probabilities = np.concatenate([part[0] for part in parts])
        if self.embedding_name is None:
            return probabilities, None
        return probabilities, np.concatenate([part[1] for part in parts])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The index of the most probable class of each image."""
        return self.probabilities(images).argmax(axis=1)
