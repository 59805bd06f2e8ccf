"""The compress stage on a tiny model built here: ONNX export with the preprocessing inside,
int8 quantization, the served-model rule, the shared classifier and its refusals, and continual
learning's export, which is the same code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tasks.compress import compress, summary_line
from tasks.compression.export import check_matches, classifier_module, torch_probabilities
from tasks.compression.latency import batch_of, latency_ms_per_image
from tasks.compression.quantize import calibration_sample
from tasks.compression.report import (
    EMBEDDING_OUTPUT,
    FP32_FILE,
    INT8_FILE,
    CompressReport,
    ModelFigures,
    choose_served,
    served_model_path,
)
from tasks.compression.runtime import OnnxClassifier
from tasks.continual.release import export_challenger
from tasks.core.config import load_params, with_overrides
from tasks.core.errors import MissingInput, UserError
from tasks.core.layout import Layout
from tasks.modeling.artifact import load_model
from tasks.modeling.embedding import embed
from tests.models import save_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c"]
SIZE = 8


def tiny_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 1, SIZE, SIZE), dtype=np.uint8)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, CompressReport]:
    """A randomly initialised width-4 CNN on 8 px images, compressed by the stage's function."""
    layout = Layout(tmp_path_factory.mktemp("compress"))
    save_tiny_model(layout.models_dir, seed=0, classes=CLASSES, image_size=SIZE, fingerprint="tiny")
    layout.packed_dir.mkdir(parents=True)
    for split, count in (("train", 40), ("test", 24)):
        np.save(layout.packed_dir / f"{split}_x.npy", tiny_images(count, seed=len(split)))
        np.save(layout.packed_dir / f"{split}_y.npy", np.arange(count) % len(CLASSES))
    params = with_overrides(
        load_params(REPO_ROOT / "params.yaml"),
        {"compress.latency_repeats": 2, "compress.calibration_images": 16, "compress.threads": 1},
    )
    return layout, compress(params, layout)


def test_the_stage_writes_two_onnx_files_and_the_report(compressed) -> None:
    layout, report = compressed
    # one file per model, weights inside (no external-data file beside them)
    assert sorted(p.name for p in layout.onnx_dir.iterdir()) == [INT8_FILE, FP32_FILE]
    assert CompressReport.load(layout.compress_report) == report
    assert set(report.models) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
    for figures in report.models.values():
        assert 0 <= figures.accuracy <= 1 and figures.size_mb > 0
        assert figures.latency_ms_b1 > 0 and figures.latency_ms_b32 > 0
    assert report.models["onnx_int8"].size_mb < report.models["onnx_fp32"].size_mb
    assert report.calibration_images == 16 and report.test_images == 24 and report.threads == 1
    assert report.max_abs_difference <= report.atol
    assert report.served in report.reason and report.served_file in (FP32_FILE, INT8_FILE)
    assert summary_line(report).startswith(f"compress: serving {report.served} (accuracy ")


def test_onnx_fp32_computes_what_torch_computes_at_any_batch_size(compressed) -> None:
    layout, report = compressed
    network, card = load_model(layout.models_dir)
    classifier = OnnxClassifier(layout.onnx_dir / FP32_FILE, threads=1)
    for count in (1, 7):  # the batch dimension is dynamic
        images = tiny_images(count, seed=count)
        expected = torch_probabilities(classifier_module(network, card), images)
        assert np.abs(classifier.probabilities(images) - expected).max() <= report.atol


def test_both_onnx_files_output_the_embedding_with_a_dynamic_batch(compressed) -> None:
    layout, _ = compressed
    for file in (FP32_FILE, INT8_FILE):
        graph = onnx.load(str(layout.onnx_dir / file)).graph
        shapes = {
            output.name: [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
            for output in graph.output
        }
        assert [output.name for output in graph.output] == ["probabilities", EMBEDDING_OUTPUT]
        assert shapes == {"probabilities": ["batch", 3], EMBEDDING_OUTPUT: ["batch", 16]}, file


def test_the_onnx_embedding_is_torchs_and_int8_keeps_the_output(compressed) -> None:
    layout, report = compressed
    network, card = load_model(layout.models_dir)
    fp32 = OnnxClassifier(layout.onnx_dir / FP32_FILE, threads=1)
    int8 = OnnxClassifier(layout.onnx_dir / INT8_FILE, threads=1)
    for count in (1, 7, 300):  # 300: more than one scoring batch
        images = tiny_images(count, seed=count)
        expected, probabilities = embed(network, card.preprocessing(), images)
        got, embeddings = fp32.outputs(images)
        assert embeddings.shape == (count, 16)  # the width-4 CNN's pooled features
        assert np.abs(embeddings - expected).max() <= report.atol
        assert np.abs(got - probabilities).max() <= report.atol
        np.testing.assert_array_equal(got, fp32.probabilities(images))  # one graph, two outputs
        # an untrained net on noise quantizes coarsely: closeness is for the trained digits
        # model (tests/model/test_compressed.py)
        assert int8.outputs(images)[1].shape == (count, 16)
    assert [part.shape for part in fp32.outputs(tiny_images(0, seed=0))] == [(0, 3), (0, 16)]
    assert fp32.embedding_size == 16


def test_a_file_without_the_embedding_output_still_classifies(compressed, tmp_path) -> None:
    layout, _ = compressed
    model = onnx.load(str(layout.onnx_dir / FP32_FILE))  # as exported before the embedding
    model.graph.output.pop()
    onnx.save(model, str(tmp_path / "old.onnx"))
    old = OnnxClassifier(tmp_path / "old.onnx")
    images = tiny_images(4, seed=2)
    probabilities, embeddings = old.outputs(images)
    assert embeddings is None and old.embedding_size is None
    np.testing.assert_allclose(
        probabilities, OnnxClassifier(layout.onnx_dir / FP32_FILE).probabilities(images)
    )
    assert old.outputs(images[:0])[1] is None


def test_the_int8_model_gives_probabilities_and_carries_the_card(compressed) -> None:
    layout, _ = compressed
    classifier = OnnxClassifier(layout.onnx_dir / INT8_FILE)
    assert classifier.classes == CLASSES
    assert (classifier.image_size, classifier.channels) == (SIZE, 1)
    probabilities = classifier.probabilities(tiny_images(5, seed=3))
    assert probabilities.shape == (5, len(CLASSES))
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)  # softmax left in fp32
    assert classifier.probabilities(tiny_images(0, seed=0)).shape == (0, len(CLASSES))


def test_the_classifier_refuses_what_the_model_does_not_take(compressed) -> None:
    layout, _ = compressed
    classifier = OnnxClassifier(layout.onnx_dir / FP32_FILE)
    with pytest.raises(UserError, match="takes uint8 images"):
        classifier.probabilities(tiny_images(2, seed=1).astype(np.float32) / 255)
    with pytest.raises(UserError, match=r"got shape \(2, 1, 4, 4\)"):
        classifier.probabilities(np.zeros((2, 1, 4, 4), dtype=np.uint8))


def test_the_served_file_is_the_one_the_report_names(compressed, tmp_path: Path) -> None:
    layout, report = compressed
    path = served_model_path(layout.onnx_dir, layout.compress_report)
    assert path == layout.onnx_dir / report.served_file and path.exists()
    with pytest.raises(MissingInput, match="serves it"):
        served_model_path(tmp_path, layout.compress_report)  # a copy without the ONNX files


def figures(accuracy: float) -> ModelFigures:
    return ModelFigures(accuracy=accuracy, size_mb=1.0, latency_ms_b1=1.0, latency_ms_b32=0.5)


def test_int8_is_served_only_within_the_accuracy_limit() -> None:
    # 1 of 270 test images is a drop of 0.0037, within 0.005; 2 of 270 (0.0074) is not
    base = {"torch_fp32": figures(1.0), "onnx_fp32": figures(1.0)}
    served, reason = choose_served({**base, "onnx_int8": figures(269 / 270)}, 0.005)
    assert served == "onnx_int8" and "within the limit" in reason
    served, reason = choose_served({**base, "onnx_int8": figures(268 / 270)}, 0.005)
    assert served == "onnx_fp32" and "over the limit" in reason and "0.9926" in reason
    served, _ = choose_served({**base, "onnx_int8": figures(0.995)}, 0.005)  # at the limit
    assert served == "onnx_int8"


def test_a_difference_beyond_atol_stops_with_one_line() -> None:
    reference = np.full((4, 3), 1 / 3, dtype=np.float32)
    difference = check_matches(reference, reference + 1e-5, 1e-4, "ONNX fp32")
    assert difference == pytest.approx(1e-5, rel=0.01)  # float32 steps near 1/3
    with pytest.raises(UserError, match=r"differ from torch's by up to 0.001.*compress.atol"):
        check_matches(reference, reference + 1e-3, 1e-4, "ONNX fp32")
    with pytest.raises(UserError, match=r"ONNX fp32 embeddings differ from torch's"):
        check_matches(reference, reference + 1e-3, 1e-4, "ONNX fp32", "embeddings")


def test_the_calibration_sample_is_seeded_and_capped() -> None:
    images = tiny_images(30, seed=0)
    first, again = calibration_sample(images, 10, seed=1), calibration_sample(images, 10, seed=1)
    assert np.array_equal(first, again) and len(first) == 10
    assert not np.array_equal(first, calibration_sample(images, 10, seed=2))
    assert len(calibration_sample(images, 100, seed=1)) == 30
    with pytest.raises(UserError, match="train split is empty"):
        calibration_sample(images[:0], 10, seed=1)


def test_latency_is_per_image_and_a_small_split_is_repeated_to_fill_the_batch() -> None:
    images = tiny_images(3, seed=0)
    assert np.array_equal(batch_of(images, 7)[3:6], images)
    seen: list[int] = []
    latency = latency_ms_per_image({"a": lambda b: seen.append(len(b))}, images, 4, repeats=7)
    assert set(seen) == {4} and len(seen) == 7 + 3 * 2  # timed runs + warm-up per block
    assert latency["a"] > 0


def test_continual_learnings_export_is_the_stages_with_the_embedding_check(
    compressed, tmp_path: Path
) -> None:
    """One export path: continual learning's `export_challenger` runs the stage's code, so the
    same model gives the same served choice and the same graph; and it refuses a network whose
    ONNX embeddings differ from torch's though its probabilities match (the check the old
    continual export had lost)."""
    layout, report = compressed
    network, card = load_model(layout.models_dir)
    params = with_overrides(
        load_params(REPO_ROOT / "params.yaml"),
        {"compress.latency_repeats": 2, "compress.calibration_images": 16, "compress.threads": 1},
    )
    train = np.load(layout.packed_dir / "train_x.npy")
    test = (np.load(layout.packed_dir / "test_x.npy"), np.load(layout.packed_dir / "test_y.npy"))
    served, reason = export_challenger(network, card, tmp_path / "same", train, test, params)
    assert served == report.served and reason.startswith(f"serving {served}: int8 accuracy")
    images = tiny_images(9, seed=5)
    stage = OnnxClassifier(layout.onnx_dir / FP32_FILE, threads=1).outputs(images)
    mine = OnnxClassifier(tmp_path / "same" / "onnx" / FP32_FILE, threads=1).outputs(images)
    for theirs, ours in zip(stage, mine, strict=True):
        np.testing.assert_array_equal(theirs, ours)

    # embeddings of about 1e6 (the last batch norm scaled up, the head down by as much): the
    # probabilities stay within compress.atol, the float32 embeddings do not
    with torch.no_grad():
        network.features[6][1].weight.mul_(1e8)
        network.features[6][1].bias.mul_(1e8)
        network.head[1].weight.mul_(1e-8)
    with pytest.raises(UserError, match=r"embeddings differ from torch's .* compress\.atol"):
        export_challenger(network, card, tmp_path / "scaled", train, test, params)
