"""`reports/compress.json`: the three models' figures and which ONNX file is served, and why.

Torch-free and onnxruntime-free, so promotion, the HTML report and the service read the same
typed file (:class:`CompressReport`) and agree on the served file (:func:`served_model_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.core.contracts import VersionedFile
from tasks.core.errors import MissingInput, shown

ModelName = Literal["torch_fp32", "onnx_fp32", "onnx_int8"]
ServedName = Literal["onnx_fp32", "onnx_int8"]
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ONNX_FILES: dict[ServedName, str] = {"onnx_fp32": FP32_FILE, "onnx_int8": INT8_FILE}
# the exported graph takes uint8 (N, C, H, W) images and returns softmax class probabilities
# (output 0) and the penultimate layer's activations (output 1, `tasks.modeling.embedding`);
# files exported before the embedding output have output 0 only
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
EMBEDDING_OUTPUT = "embedding"
# a drop equal to the limit counts as within it, whatever the float rounding of 1/n steps
_DROP_TOLERANCE = 1e-9


class ModelFigures(BaseModel):
    """One model's test accuracy, file size (MB = 10^6 bytes) and latency per image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: float = Field(ge=0, le=1)
    size_mb: float = Field(ge=0)
    latency_ms_b1: float = Field(ge=0)
    latency_ms_b32: float = Field(ge=0)


class CompressReport(VersionedFile):
    """`reports/compress.json`, written by the compress stage."""

    PRODUCER: ClassVar[str] = "the compress stage"

    models: dict[ModelName, ModelFigures]
    served: ServedName
    served_file: str  # inside models/onnx
    reason: str
    accuracy_drop: float  # torch fp32 accuracy minus ONNX int8 accuracy, on the test split
    latency_ratio_b32: float  # served model / torch fp32, latency per image at batch 32
    max_abs_difference: float  # ONNX fp32 vs torch probabilities, on the test split
    atol: float
    threads: int
    latency_repeats: int
    calibration_images: int
    test_images: int
    output: Literal["probabilities"] = "probabilities"
    versions: dict[str, str]  # torch, onnx, onnxruntime that produced and timed the files


def choose_served(models: dict[str, ModelFigures], max_drop: float) -> tuple[ServedName, str]:
    """ONNX int8 when its test accuracy is at most `max_drop` below torch fp32's, else ONNX fp32;
    and the reason, with the figures."""
    torch_fp32, int8 = models["torch_fp32"], models["onnx_int8"]
    drop = torch_fp32.accuracy - int8.accuracy
    figures = (
        f"int8 accuracy {int8.accuracy:.4f} vs torch fp32 {torch_fp32.accuracy:.4f}: "
        f"drop {drop:+.4f}, limit compress.max_accuracy_drop = {max_drop:.4f}"
    )
    if drop <= max_drop + _DROP_TOLERANCE:
        speed = models["onnx_int8"].latency_ms_b32 / max(torch_fp32.latency_ms_b32, 1e-12)
        return "onnx_int8", (
            f"serving onnx_int8: {figures}, within the limit; batch-32 latency "
            f"{speed:.2f}x torch fp32's"
        )
    return "onnx_fp32", f"serving onnx_fp32: {figures}, over the limit, so int8 is not served"


def served_model_path(onnx_dir: Path, compress_report: Path) -> Path:
    """The ONNX file to serve: the one `compress_report` names, inside `onnx_dir`.

    Takes both paths (not a Layout) so that a registry's copy of a model is read the same way.
    """
    report = CompressReport.load(compress_report)
    path = onnx_dir / report.served_file
    if not path.exists():
        raise MissingInput(
            f"{shown(path)} is missing although {shown(compress_report)} serves it; "
            "re-run the compress stage (`dvc repro compress`)"
        )
    return path
