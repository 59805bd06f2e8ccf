"""Deciding which split every image goes to: stratified and seeded, or whole groups at a time.

A split that cannot be made soundly (a class too small to stratify, too few groups, a class with
no train image or fewer than `data.min_per_split` images in val or test) stops with a
:class:`SplitError` naming the classes, the splits and what to do, never a silent result: a test
split that lacks a class gives a perfect score that means nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from tasks.core.config import DataConfig
from tasks.core.errors import UserError


class SplitError(UserError, ValueError):
    """The accepted data cannot be split as configured."""


def assign_splits(manifest: pd.DataFrame, data: DataConfig, seed: int) -> pd.Series:
    """Stratified split; returns the split name for every row of `manifest`.

    Every class must end up with at least one train image and `data.min_per_split` images in val
    and in test: a split that hides a class from test gives a perfect, wrong score.
    """
    counts = manifest["label"].value_counts()
    if len(counts) < 2:
        raise SplitError(
            f"split: the accepted images hold {len(counts)} class(es) "
            f"({', '.join(map(str, counts.index))}); a classifier needs at least 2"
        )
    needed = 1 + 2 * data.min_per_split
    too_few = counts[counts < needed].sort_index()
    if not too_few.empty:
        raise SplitError(
            f"split: class(es) {_named(too_few.items(), 'image(s)')} have fewer than {needed} "
            f"accepted images (1 for train, data.min_per_split={data.min_per_split} each for val "
            f"and test); {_advice(data, 'add images to them', fractions=None)}"
        )
    indices = np.arange(len(manifest))
    labels = manifest["label"].to_numpy()
    held_out = data.val_fraction + data.test_fraction
    if data.group_column:
        groups = manifest["group"].to_numpy()
        if (groups == "").any():
            raise SplitError(
                f"split: {int((groups == '').sum())} image(s) have no value in "
                f"data.group_column={data.group_column!r}; fill in the column for every row of "
                "the manifest"
            )
        first, second = _folds_for(held_out), _folds_for(data.test_fraction / held_out)
        distinct = len(np.unique(groups))
        if distinct < first * second:
            raise SplitError(
                f"split: data.group_column={data.group_column!r} gives {distinct} group(s); "
                f"holding out whole groups for validation and test needs at least "
                f"{first * second} ({first} folds, then {second}); add groups, change "
                "data.val_fraction/data.test_fraction, or unset data.group_column"
            )
        train_idx, rest_idx = _group_split(indices, labels, groups, first, seed)
        val_part, test_part = _group_split(
            np.arange(len(rest_idx)), labels[rest_idx], groups[rest_idx], second, seed
        )
        val_idx, test_idx = rest_idx[val_part], rest_idx[test_part]
    else:
        try:
            train_idx, rest_idx = train_test_split(
                indices, test_size=held_out, stratify=labels, random_state=seed
            )
            val_idx, test_idx = train_test_split(
                rest_idx,
                test_size=data.test_fraction / held_out,
                stratify=labels[rest_idx],
                random_state=seed,
            )
        except ValueError:  # a class too small for the fractions; said in sixfold's words
            raise _cannot_stratify(counts, data) from None
    for name, part in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        if len(part) == 0:
            raise SplitError(f"split: the {name} split came out empty; add images or groups")
    split = np.empty(len(manifest), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    _check_every_class_in_every_split(manifest, split, data)
    return pd.Series(split, index=manifest.index, name="split")


def _named(items: Iterable[tuple[object, object]], unit: str, shown: int = 8) -> str:
    """`'a' (2 image(s)), 'b' (1 image(s))`, at most `shown` of them, then `and N more`."""
    listed = list(items)
    text = ", ".join(f"{str(label)!r} ({value} {unit})" for label, value in listed[:shown])
    return text + (f" and {len(listed) - shown} more" if len(listed) > shown else "")


def _advice(data: DataConfig, first: str, fractions: str | None = "change") -> str:
    """What a user can do about classes that cannot be spread over train, val and test."""
    options = [first]
    if fractions:
        options.append(f"{fractions} data.val_fraction/data.test_fraction")
    options.append("leave them out via data.classes")
    if data.min_per_split > 1:
        options.append("lower data.min_per_split")
    return ", ".join(options[:-1]) + f" or {options[-1]}"


def _cannot_stratify(counts: pd.Series, data: DataConfig) -> SplitError:
    """The error for a stratified split scikit-learn refused, naming the classes too small."""
    smaller = min(data.val_fraction, data.test_fraction)
    expected = (counts * smaller).sort_values(kind="stable")
    short = expected[expected < data.min_per_split]
    if short.empty:  # every class is large enough on average: the fractions hold too few images
        short = expected.head(3)
    smallest = [(label, int(counts[label])) for label in short.index]
    return SplitError(
        f"split: cannot give every class data.min_per_split={data.min_per_split} image(s) in val "
        f"and in test with data.val_fraction={data.val_fraction} and "
        f"data.test_fraction={data.test_fraction} ({counts.sum()} images, {len(counts)} classes); "
        f"smallest: {_named(smallest, 'images')}; "
        + _advice(data, "add images to the smallest classes", fractions="raise")
    )


def _check_every_class_in_every_split(
    manifest: pd.DataFrame, split: np.ndarray, data: DataConfig
) -> None:
    """Raise a SplitError naming each class with no train image or too few val/test images."""
    table = pd.crosstab(manifest["label"].to_numpy(), split).reindex(
        columns=["train", "val", "test"], fill_value=0
    )
    minimum = {"train": 1, "val": data.min_per_split, "test": data.min_per_split}
    short = []
    for label, row in table.sort_index(key=lambda index: index.map(str)).iterrows():
        lacking = [f"{name} {row[name]}" for name in minimum if row[name] < minimum[name]]
        if lacking:
            if data.group_column:
                groups = manifest.loc[manifest["label"] == label, "group"].nunique()
                short.append((label, f"{', '.join(lacking)}; {groups} group(s)"))
            else:
                short.append((label, ", ".join(lacking)))
    if not short:
        return
    if data.group_column:
        why = (
            f"; whole groups of data.group_column={data.group_column!r} go to one split, so each "
            "class needs groups in train, val and test"
        )
        first = "add groups holding these classes"
    else:
        why, first = "", "add images to these classes"
    listed = ", ".join(f"{str(label)!r} ({text})" for label, text in short[:8])
    more = f" and {len(short) - 8} more" if len(short) > 8 else ""
    raise SplitError(
        f"split: class(es) missing from a split or with fewer than "
        f"data.min_per_split={data.min_per_split} image(s) in val or test: {listed}{more}{why}: "
        + _advice(data, first)
    )


def _folds_for(fraction: float) -> int:
    """k such that one of k group folds holds out about `fraction` (0.3 -> 3, 0.5 -> 2)."""
    return max(2, round(1 / fraction))


def _group_split(
    indices: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out one of `folds` seeded StratifiedGroupKFold folds: whole groups, class shares."""
    distinct = len(np.unique(groups))
    if distinct < folds:
        raise SplitError(
            f"split: only {distinct} group(s) left to divide into {folds} folds; add groups or "
            "change data.val_fraction/data.test_fraction"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            keep, held = next(splitter.split(indices, labels, groups))
    except ValueError:  # every class has fewer images than folds: said in sixfold's words
        raise SplitError(
            f"split: cannot divide {distinct} group(s) into {folds} folds: every class has fewer "
            f"than {folds} images in them; add groups or change "
            "data.val_fraction/data.test_fraction"
        ) from None
    return indices[keep], indices[held]


def assign_folds(
    labels: np.ndarray,
    groups: np.ndarray | None,
    folds: int,
    seed: int,
    classes: list[str] | None = None,
) -> np.ndarray:
    """A fold id (0..folds-1) per image, stratified by label (and grouped when groups are given).

    Every fold validates on every class, so each class needs `folds` images (or groups) in the
    pool; `classes` names the label indices in the error.
    """
    unit = "group(s)" if groups is not None else "image(s)"
    per_class = (
        pd.Series(groups).groupby(labels).nunique()
        if groups is not None
        else pd.Series(labels).value_counts()
    )
    short = per_class[per_class < folds].sort_index()
    if not short.empty:
        named = [(classes[int(c)] if classes else c, int(n)) for c, n in short.items()]
        raise SplitError(
            f"split: train.cv_folds={folds} validates every class in each fold, but "
            f"{_named(named, unit)} have fewer than {folds} {unit} in train+val; lower "
            f"train.cv_folds, add {'groups holding' if groups is not None else 'images to'} "
            "these classes or leave them out via data.classes"
        )
    fold_of = np.zeros(len(labels), dtype=np.int64)
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(labels, labels, groups)
    else:
        parts = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            labels, labels
        )
    for fold, (_train, held_out) in enumerate(parts):
        fold_of[held_out] = fold
    return fold_of
