"""A split must give every class a train image and `data.min_per_split` images in val and test.

A split that hides a class from test scores it perfectly and wrongly, so the split stage stops
with one line naming the classes, the splits and what to do. The stage-level case replays what a
new user met: a manifest whose groups each hold one label (one patient per diagnosis).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.config import DataConfig
from tasks.core.layout import Layout
from tasks.data.splitting import SplitError, assign_folds, assign_splits
from tests.conftest import REPO_ROOT, run
from tests.images import write_grouped_manifest
from tests.stages import read_split, run_stages

SPLIT_NAMES = ("train", "val", "test")


def one_label_per_group(groups: int, classes: int, per_group: int) -> pd.DataFrame:
    """`groups` groups, each holding `per_group` images of one class (group g is class g % n)."""
    return pd.DataFrame(
        [
            {"path": f"g{g}/{i}.png", "label": f"c{g % classes}", "group": f"g{g}"}
            for g in range(groups)
            for i in range(per_group)
        ]
    )


def ungrouped(sizes: dict[str, int]) -> pd.DataFrame:
    """A manifest with `sizes[label]` images of each label and no groups."""
    rows = [
        {"path": f"{label}/{i}.png", "label": label, "group": ""}
        for label, size in sizes.items()
        for i in range(size)
    ]
    return pd.DataFrame(rows)


def classes_short_of(
    manifest: pd.DataFrame, split: pd.Series, minimum: int
) -> dict[str, list[str]]:
    """For each class, the splits where it has fewer images than required (train needs 1)."""
    table = pd.crosstab(manifest["label"], split).reindex(columns=SPLIT_NAMES, fill_value=0)
    needed = {"train": 1, "val": minimum, "test": minimum}
    short = {
        str(label): [name for name in SPLIT_NAMES if row[name] < needed[name]]
        for label, row in table.iterrows()
    }
    return {label: names for label, names in short.items() if names}


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_groups_of_one_label_too_few_to_reach_every_split_stop_the_split(seed: int) -> None:
    manifest = one_label_per_group(groups=8, classes=4, per_group=10)  # 2 groups per class
    with pytest.raises(SplitError) as caught:
        assign_splits(manifest, DataConfig(group_column="group"), seed=seed)
    message = str(caught.value)
    assert "\n" not in message
    assert "data.group_column='group'" in message
    for advice in ("add groups", "data.val_fraction/data.test_fraction", "data.classes"):
        assert advice in message, advice
    # 2 groups per class cannot reach 3 splits: some class is named, with the split it misses
    assert any(f"'c{c}' (" in message for c in range(4))
    assert "val 0" in message or "test 0" in message


def test_the_named_classes_are_those_missing_from_a_split() -> None:
    """Enough groups for every class but one: only that class is named, with its splits."""
    manifest = pd.concat(
        [
            one_label_per_group(groups=30, classes=3, per_group=4),
            one_label_per_group(groups=1, classes=1, per_group=6).assign(
                label="rare", group="rare0", path=lambda t: "rare/" + t["path"]
            ),
        ],
        ignore_index=True,
    )
    data = DataConfig(group_column="group")
    with pytest.raises(SplitError) as caught:
        assign_splits(manifest, data, seed=0)
    message = str(caught.value)
    assert "'rare' (" in message and "1 group(s)" in message
    assert all(f"'c{c}'" not in message for c in range(3))
    # without the rare class the same groups split soundly, every class in every split
    common = manifest[manifest["label"] != "rare"].reset_index(drop=True)
    assert classes_short_of(common, assign_splits(common, data, seed=0), 1) == {}


@pytest.mark.parametrize("minimum", [1, 3])
def test_min_per_split_met_passes(minimum: int) -> None:
    manifest = ungrouped({"a": 60, "b": 60, "c": 20})  # c: 3 in val and 3 in test
    split = assign_splits(manifest, DataConfig(min_per_split=minimum), seed=0)
    assert classes_short_of(manifest, split, minimum) == {}


def test_min_per_split_not_met_stops_the_split() -> None:
    manifest = ungrouped({"a": 60, "b": 60, "c": 20})  # 20 x 0.15: 3 each, not 4
    with pytest.raises(SplitError) as caught:
        assign_splits(manifest, DataConfig(min_per_split=4), seed=0)
    message = str(caught.value)
    assert "data.min_per_split=4" in message and "lower data.min_per_split" in message
    assert "'c' (val 3, test 3)" in message and "'a' (" not in message


def test_a_class_of_two_images_is_named_before_any_split() -> None:
    manifest = ungrouped({"a": 30, "b": 30, "pair": 2})
    with pytest.raises(SplitError) as caught:
        assign_splits(manifest, DataConfig(), seed=0)
    message = str(caught.value)
    assert "'pair' (2 image(s))" in message and "fewer than 3" in message
    assert "data.classes" in message


def test_scikit_learn_wording_never_reaches_the_user() -> None:
    """A class of 3 images leaves 1 for val+test: scikit-learn refuses; sixfold names the class."""
    manifest = ungrouped({"a": 30, "b": 30, "c": 30, "tiny": 3})
    with pytest.raises(SplitError) as caught:
        assign_splits(manifest, DataConfig(), seed=0)
    message = str(caught.value)
    assert "least populated" not in message and "too few" not in message.lower()
    assert "'tiny' (3 images)" in message
    assert "raise data.val_fraction/data.test_fraction" in message
    assert "'a' (" not in message  # only the class that is too small


def test_group_folds_scikit_learn_refuses_are_said_in_sixfold_words() -> None:
    """6 groups of one image: the 2 held-out groups cannot be divided into val and test."""
    manifest = pd.DataFrame(
        [{"path": f"g{g}.png", "label": "ab"[g % 2], "group": f"g{g}"} for g in range(6)]
    )
    with pytest.raises(SplitError) as caught:
        assign_splits(manifest, DataConfig(group_column="group"), seed=0)
    message = str(caught.value)
    assert "n_splits" not in message and "members" not in message
    assert "cannot divide 2 group(s) into 2 folds" in message and "add groups" in message


def test_digits_sized_classes_pass_the_check() -> None:
    manifest = ungrouped({str(digit): 50 for digit in range(10)})
    split = assign_splits(manifest, DataConfig(), seed=42)
    assert classes_short_of(manifest, split, 1) == {}


# --------------------------------------------------------------------------- cross-validation


def test_cv_folds_need_every_class_in_every_fold() -> None:
    """train.cv_folds=3 with a class of 2 train+val images: one fold would validate without it."""
    labels = np.array([0] * 20 + [1] * 20 + [2] * 2)
    with pytest.raises(SplitError) as caught:
        assign_folds(labels, None, folds=3, seed=0, classes=["cat", "dog", "rare"])
    message = str(caught.value)
    assert "train.cv_folds=3" in message and "'rare' (2 image(s))" in message
    assert "'cat'" not in message and "lower train.cv_folds" in message
    # control: with 3 images of that class every fold holds every class
    labels = np.array([0] * 20 + [1] * 20 + [2] * 3)
    fold_of = assign_folds(labels, None, folds=3, seed=0)
    for fold in range(3):
        assert set(labels[fold_of == fold]) == {0, 1, 2}


def test_grouped_cv_folds_count_groups_not_images() -> None:
    labels = np.array([0] * 12 + [1] * 12)
    groups = np.array([f"a{i % 6}" for i in range(12)] + [f"b{i % 2}" for i in range(12)])
    with pytest.raises(SplitError) as caught:
        assign_folds(labels, groups, folds=3, seed=0, classes=["many", "few"])
    message = str(caught.value)
    assert "'few' (2 group(s)) have fewer than 3 group(s)" in message and "'many'" not in message
    assert "add groups holding these classes" in message


# --------------------------------------------------------------------------- the stage


def test_the_split_stage_stops_with_one_line_for_groups_of_one_label(tmp_path: Path) -> None:
    """The new user's case: 8 patients, 2 per diagnosis; today's test would hold one class."""
    manifest, _ = write_grouped_manifest(
        tmp_path / "patients", "patient", 8, 6, lambda patient, _: f"d{patient % 4}"
    )
    work = tmp_path / "work"
    overrides = {"data": {"source": str(manifest), "group_column": "patient"}}
    run_stages(work, overrides, stages=("ingest", "validate"))

    result = run(
        [sys.executable, "-m", "tasks.split"],
        work,
        check=False,
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: split: class(es) "), result.stderr
    assert "data.group_column='patient'" in lines[0]
    assert not Layout(work).split_file.exists()  # nothing for train to pick up


def test_the_split_stage_passes_when_every_class_reaches_every_split(tmp_path: Path) -> None:
    """Control for the case above: 24 patients, 6 per diagnosis, split as configured."""
    manifest, _ = write_grouped_manifest(
        tmp_path / "patients", "patient", 24, 3, lambda patient, _: f"d{patient % 4}"
    )
    work = tmp_path / "work"
    overrides = {"data": {"source": str(manifest), "group_column": "patient"}}
    run_stages(work, overrides, stages=("ingest", "validate", "split"))
    split = read_split(work)
    assert classes_short_of(split, split["split"], 1) == {}
