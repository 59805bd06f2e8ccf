"""Typed files between stages: the packed metadata and the model card are validated on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.contracts import IncompatibleFile
from tasks.core.errors import MissingInput, UserError
from tasks.data.packed import PackedMeta
from tasks.modeling.artifact import ModelCard, Normalization

META = {
    "classes": ["a", "b"],
    "image_size": 16,
    "channels": 1,
    "mean": [0.3],
    "std": [0.2],
    "counts": {"train": 10, "val": 2, "test": 2},
    "near_duplicate_pairs_across_splits": 0,
}


def test_packed_meta_round_trips_with_its_format_version(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    PackedMeta.create(**META).save(path)
    assert json.loads(path.read_text())["format_version"] == PackedMeta.FORMAT_VERSION
    loaded = PackedMeta.load(path)
    assert loaded.classes == ["a", "b"] and loaded.mean == [0.3]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"format_version": 2},
            r"format version 2, this sixfold reads version 1; re-run the split",
        ),
        ({"format_version": None}, r"no format_version"),
        ({"mean": None}, r"incomplete or malformed \(mean"),
        ({"classes": ["only one"]}, r"incomplete or malformed \(classes"),
    ],
)
def test_a_packed_meta_from_elsewhere_stops_with_one_line(
    tmp_path: Path, change: dict, expected: str
) -> None:
    raw = {"format_version": 1, **META, **change}
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    with pytest.raises(IncompatibleFile, match=expected) as caught:
        PackedMeta.load(path)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


def test_a_missing_or_broken_file_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingInput, match="run the split stage first"):
        PackedMeta.load(tmp_path / "meta.json")
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(IncompatibleFile, match=r"not valid JSON.*re-run the train stage"):
        ModelCard.load(tmp_path / "model.json")


def test_the_model_card_rebuilds_network_and_preprocessing(tmp_path: Path) -> None:
    card = ModelCard.create(
        arch="cnn",
        width=8,
        dropout=0.1,
        classes=["a", "b", "c"],
        image_size=16,
        channels=1,
        normalization=Normalization(mean=[0.5], std=[0.25]),
        params_fingerprint="x",
    )
    card.save(tmp_path / "model.json")
    loaded = ModelCard.load(tmp_path / "model.json")
    assert loaded == card
    network = loaded.build_network()
    assert network.head_prefix  # a network of the zoo
    preprocessing = loaded.preprocessing()
    assert preprocessing.mean.flatten().tolist() == [0.5]
    assert preprocessing.std.flatten().tolist() == [0.25]
    broken = json.loads((tmp_path / "model.json").read_text())
    del broken["normalization"]
    (tmp_path / "model.json").write_text(json.dumps(broken))
    with pytest.raises(IncompatibleFile, match="normalization"):
        ModelCard.load(tmp_path / "model.json")
