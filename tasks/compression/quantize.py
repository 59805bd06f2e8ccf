"""Static int8 quantization of the exported ONNX model with onnxruntime, calibrated on train images.

The format is QDQ with uint8 activations, int8 weights and per-channel weight scales. On a 2-core
Xeon with AVX512-VNNI (issue 10) the default S8S8 was slower than fp32 and U8S8 per-channel QDQ
2.2x faster; dynamic quantization of convolutions was slow. Digits CNN on the 2-core AMD EPYC
(AVX512-VNNI) here, batch 32, ms/image: fp32 0.19, U8S8 per-channel QDQ 0.043, S8S8 0.050,
U8S8 per-tensor 0.050, QOperator 0.051, dynamic 0.45; all kept the test accuracy.
onnxruntime's quantization pre-processing (`quant_pre_process`: symbolic shape inference and
graph optimization) changed neither the accuracy nor the latency (0.0286 ms/image either way):
the exporter has already folded batch normalization, so it is not run.

The classification head (the last linear layer) and the softmax stay fp32: quantized, the
probabilities came in steps of 1/255 (two classes could tie), and the head is a tiny part of the
work (digits CNN at batch 32: 0.0504 ms/image all quantized, 0.0503 with the head in fp32).

The second output, the embedding (the head's input), stays an output of the int8 graph: its
value is the dequantized activation the fp32 head also reads, so it comes in the activation's
uint8 steps (digits champion: within 0.047 of torch's on values up to 4.3). The drift monitor
takes its reference embeddings from the same served file, so both sides have those steps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from tasks.compression.report import INPUT_NAME
from tasks.core.errors import UserError

CALIBRATION_BATCH = 32


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` train images (all when there are fewer), drawn without replacement, seeded."""
    if len(images) == 0:
        raise UserError("compress: the train split is empty, so int8 cannot be calibrated")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    return np.ascontiguousarray(images[chosen])


class CalibrationImages(CalibrationDataReader):
    """Feeds the calibration images to onnxruntime's calibrator, one batch at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self.images, self.batch_size = images, batch_size
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.images):
            return None
        batch = self.images[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {INPUT_NAME: np.ascontiguousarray(batch)}

    def rewind(self) -> None:
        self.position = 0


@contextmanager
def root_logging_above_warnings() -> Iterator[None]:
    """The quantizer warns through the root logger that pre-processing was not run; it was left
    out on purpose (see the module docstring), so the warning is kept off the stage's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def output_head(model: onnx.ModelProto) -> list[str]:
    """The names of the node producing the graph's first output (the softmax: the embedding
    output comes second) and of the node feeding it (the classification head), which
    quantization leaves in fp32."""
    producers = {output: node for node in model.graph.node for output in node.output}
    last = producers[model.graph.output[0].name]
    head = [producers[name] for name in last.input if name in producers]
    return [node.name for node in (last, *head) if node.name]


def quantize_int8(source: Path, destination: Path, calibration: np.ndarray) -> Path:
    """Write the int8 (QDQ, U8S8, per-channel) version of `source` to `destination`, with the
    metadata of `source` (classes, image size: the quantizer drops them)."""
    model = onnx.load(str(source))
    with root_logging_above_warnings():
        quantize_static(
            str(source),
            str(destination),
            CalibrationImages(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=output_head(model),
        )
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    quantized = onnx.load(str(destination))
    onnx.helper.set_model_props(quantized, metadata)
    onnx.save(quantized, str(destination))
    return destination
