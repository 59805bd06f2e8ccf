"""The explain stage on a tiny network: Captum attributions, the randomization check, the grids.

The trained network is a compact CNN fitted for a few epochs on scikit-learn's 8x8 digits (about
two seconds); its random twin is the same architecture re-initialised under a seed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

from tasks.core.config import ExplainConfig, ExplainMethod, load_params
from tasks.core.errors import UserError
from tasks.core.layout import Layout
from tasks.explain import explain, main, sample_per_class
from tasks.explaining.attributions import (
    ScaledInputModel,
    attribute,
    predicted_classes,
    superpixels,
)
from tasks.explaining.grids import GridRow, overlay_png, save_grid
from tasks.explaining.sanity import randomization_check, randomized_copy, rank_correlation
from tasks.modeling.artifact import ModelCard, Normalization, save_model
from tasks.modeling.networks import build_network
from tasks.modeling.preprocessing import Preprocessing

REPO_ROOT = Path(__file__).resolve().parents[2]
METHODS: tuple[ExplainMethod, ...] = ("integrated_gradients", "gradient_shap", "lime")
TRAIN = 1500  # digits used for training; the rest are the test images
SMALL = ExplainConfig(
    per_class=1,
    max_misclassified=3,
    ig_steps=16,
    shap_samples=8,
    lime_samples=60,
    lime_grid=4,
    sanity_samples=16,
    sanity_max_correlation=0.7,
)


def tiny_network() -> nn.Module:
    return build_network("cnn", 1, 10, width=8, dropout=0.0, image_size=8)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N, 1, 8, 8) images and their labels."""
    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)[:, None]
    return images, bunch.target


@pytest.fixture(scope="module")
def trained(digits: tuple[np.ndarray, np.ndarray]) -> tuple[nn.Module, Preprocessing]:
    """A tiny CNN fitted for 3 epochs (about 90 % test accuracy) and its preprocessing."""
    images, labels = digits
    scaled = images[:TRAIN] / 255.0
    preprocessing = Preprocessing(8, 1, [float(scaled.mean())], [float(scaled.std())])
    inputs, targets = preprocessing(images[:TRAIN]), torch.from_numpy(labels[:TRAIN])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = tiny_network()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
        for _ in range(3):
            order = torch.randperm(TRAIN)
            for start in range(0, TRAIN, 64):
                batch = order[start : start + 64]
                loss = nn.functional.cross_entropy(network(inputs[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return network.eval(), preprocessing


def test_lime_superpixels_are_squares_shared_by_the_channels() -> None:
    mask = superpixels(channels=3, size=16, grid=8)
    assert mask.shape == (1, 3, 16, 16)
    assert torch.equal(mask[0, 0], mask[0, 2])
    assert sorted(mask.unique().tolist()) == list(range(64))
    assert (mask[0, 0, :2, :2] == 0).all() and mask[0, 0, 15, 15] == 63
    uneven = superpixels(channels=1, size=10, grid=3)  # sizes that do not divide still cover
    assert sorted(uneven.unique().tolist()) == list(range(9))


def test_integrated_gradients_explains_the_scaled_image_from_black(
    trained: tuple[nn.Module, Preprocessing], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    # completeness: the attributions add up to logit(image) - logit(black picture), so the input
    # Captum sees is the [0, 1] picture and the normalization happens inside the model
    network, preprocessing = trained
    model = ScaledInputModel(network, preprocessing)
    images = preprocessing.scale(digits[0][TRAIN : TRAIN + 4])
    targets = predicted_classes(model, images, 64)
    config = ExplainConfig(ig_steps=200)
    maps = attribute("integrated_gradients", model, images, targets, config, seed=0)
    with torch.no_grad():
        gap = model(images) - model(torch.zeros_like(images))
    expected = gap[torch.arange(4), targets].numpy()
    assert np.allclose(maps.reshape(4, -1).sum(axis=1), expected, rtol=0.05, atol=0.05)
    black = images.numpy() == 0
    assert (maps[black] == 0).all()  # the reason the sanity check ranks non-black pixels only


def test_attributions_are_seeded_and_leave_the_global_generators_alone(
    trained: tuple[nn.Module, Preprocessing], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    network, preprocessing = trained
    model = ScaledInputModel(network, preprocessing)
    images = preprocessing.scale(digits[0][TRAIN : TRAIN + 3])
    targets = predicted_classes(model, images, 64)
    for method in ("gradient_shap", "lime"):
        torch.manual_seed(5)
        np.random.seed(5)
        first = attribute(method, model, images, targets, SMALL, seed=1)
        after = (torch.rand(1).item(), np.random.rand())
        torch.manual_seed(5)
        np.random.seed(5)
        assert after == (torch.rand(1).item(), np.random.rand())  # as if nothing had run
        assert np.array_equal(first, attribute(method, model, images, targets, SMALL, seed=1))
        assert not np.array_equal(first, attribute(method, model, images, targets, SMALL, seed=2))
        assert first.shape == tuple(images.shape)


def test_rank_correlation_ranks_only_the_pixels_that_are_not_black() -> None:
    images = np.zeros((1, 1, 4, 4))
    images[0, 0, :2] = 0.5  # the top half is drawn, the bottom half black
    first, second = np.zeros_like(images), np.zeros_like(images)
    first[0, 0, :2] = np.arange(8).reshape(2, 4)
    second[0, 0, :2] = -np.arange(8).reshape(2, 4)[::-1, ::-1]  # reversed ranks, absolute
    assert rank_correlation(first, second, images) == pytest.approx(-1.0)
    # over all pixels the shared zeros of the black half would make the two maps agree
    everywhere = np.ones_like(images)
    assert rank_correlation(first, second, everywhere) > 0
    # a constant map has no ranks: it agrees only with another constant map
    assert rank_correlation(np.zeros_like(images), np.zeros_like(images), images) == 1.0
    assert rank_correlation(first, np.zeros_like(images), images) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_the_check_fails_when_the_trained_model_is_its_own_random_copy(
    method: ExplainMethod,
    trained: tuple[nn.Module, Preprocessing],
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    _, preprocessing = trained
    impostor = ScaledInputModel(randomized_copy(tiny_network, seed=3), preprocessing)
    randomized = ScaledInputModel(randomized_copy(tiny_network, seed=3), preprocessing)
    images = preprocessing.scale(digits[0][TRAIN : TRAIN + SMALL.sanity_samples])
    targets = predicted_classes(impostor, images, 64)
    result = randomization_check(method, impostor, randomized, images, targets, SMALL, seed=3)
    assert not result.passed and result.correlation == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_the_check_passes_on_a_trained_model(
    method: ExplainMethod,
    trained: tuple[nn.Module, Preprocessing],
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    network, preprocessing = trained
    model = ScaledInputModel(network, preprocessing)
    randomized = ScaledInputModel(randomized_copy(tiny_network, seed=3), preprocessing)
    images = preprocessing.scale(digits[0][TRAIN : TRAIN + SMALL.sanity_samples])
    targets = predicted_classes(model, images, 64)
    result = randomization_check(method, model, randomized, images, targets, SMALL, seed=3)
    assert result.passed, result
    assert result.as_json() == {
        "correlation": result.correlation,
        "threshold": 0.7,
        "passed": True,
    }


def test_sample_per_class_draws_each_class_from_the_eligible_images() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    eligible = np.array([True, True, False, True, True, False])
    chosen = sample_per_class(labels, eligible, per_class=2, seed=0)
    assert sorted(chosen.tolist()) == [0, 1, 3, 4]  # class 2 has nothing eligible
    assert np.array_equal(chosen, sample_per_class(labels, eligible, per_class=2, seed=0))


def _stage_folder(
    root: Path, network: nn.Module, preprocessing: Preprocessing, digits: tuple[np.ndarray, ...]
) -> Layout:
    """A repository folder with the real params.yaml (explain shrunk), a model and a test split."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["explain"] = SMALL.model_dump()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    layout = Layout(root)
    layout.packed_dir.mkdir(parents=True)
    np.save(layout.packed_dir / "test_x.npy", digits[0][TRAIN:])
    np.save(layout.packed_dir / "test_y.npy", digits[1][TRAIN:])
    card = ModelCard.create(
        arch="cnn",
        width=8,
        dropout=0.0,
        classes=[str(label) for label in range(10)],
        image_size=8,
        channels=1,
        normalization=Normalization(
            mean=preprocessing.mean.flatten().tolist(), std=preprocessing.std.flatten().tolist()
        ),
        params_fingerprint="test",
    )
    save_model(network, card, layout.models_dir)
    return layout


def test_the_stage_writes_grids_and_summary_then_fails_a_failed_check_loudly(
    tmp_path: Path,
    trained: tuple[nn.Module, Preprocessing],
    digits: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network, preprocessing = trained
    layout = _stage_folder(tmp_path, network, preprocessing, digits)
    summary = explain(load_params(layout.params_file), layout)

    wrong = int(
        (
            predicted_classes(
                ScaledInputModel(network, preprocessing), preprocessing.scale(digits[0][TRAIN:]), 64
            ).numpy()
            != digits[1][TRAIN:]
        ).sum()
    )
    assert 3 < wrong < 60  # the tiny model makes mistakes, so the grids show some
    assert summary["images"] == {"sampled": 10, "misclassified": wrong, "misclassified_shown": 3}
    assert summary["passed"] and set(summary["methods"]) == set(METHODS)
    for method, entry in summary["methods"].items():
        with Image.open(layout.explain_reports / f"{method}.png") as grid:
            assert grid.width > 600 and grid.height > 400
        assert entry["sanity"]["threshold"] == 0.7 and entry["seconds"] >= 0
    assert json.loads((layout.explain_reports / "summary.json").read_text()) == summary

    # a threshold no map can meet: everything is still written, then one line names the method
    params = yaml.safe_load(layout.params_file.read_text())
    params["explain"].update(sanity_max_correlation=-0.99)
    layout.params_file.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"integrated_gradients maps correlate -?\d\.\d\d") as error:
        main()
    assert "\n" not in str(error.value)
    written = json.loads((layout.explain_reports / "summary.json").read_text())
    assert (
        written["passed"] is False
        and not written["methods"]["integrated_gradients"]["sanity"]["passed"]
    )


def test_grids_mark_mistakes_and_draw_gray_and_colour_images(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).random((1, 16, 16))
    colour = np.random.default_rng(1).random((3, 96, 96))
    rows = [
        GridRow(gray, gray - 0.5, "3", "3"),
        GridRow(gray, 0.5 - gray, "3", "8"),
    ]
    save_grid(tmp_path / "gray.png", rows, "Integrated Gradients")
    save_grid(tmp_path / "colour.png", [GridRow(colour, colour - 0.5, "cat", "dog")], "LIME")
    save_grid(tmp_path / "empty.png", [], "LIME")
    for name in ("gray.png", "colour.png", "empty.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 100 and image.height > 100
    assert not rows[0].misclassified and rows[1].misclassified


def test_overlay_png_explains_one_image_for_the_service(
    trained: tuple[nn.Module, Preprocessing], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    network, preprocessing = trained
    image = digits[0][TRAIN]
    predicted = int(
        predicted_classes(
            ScaledInputModel(network, preprocessing), preprocessing.scale(image[None]), 1
        )[0]
    )
    png = overlay_png(network, preprocessing, image)
    assert png.startswith(b"\x89PNG")
    assert png == overlay_png(network, preprocessing, image, target=predicted)
    assert png != overlay_png(network, preprocessing, image, target=(predicted + 1) % 10)
    colour_network = build_network("cnn", 3, 4, width=4, image_size=32).eval()
    colour = Preprocessing(32, 3, [0.5] * 3, [0.25] * 3)
    image = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    with Image.open(io.BytesIO(overlay_png(colour_network, colour, image, target=2))) as picture:
        assert picture.format == "PNG" and picture.width > picture.height
