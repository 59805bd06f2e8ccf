"""Deciding which split every image goes to: stratified and seeded, or whole groups at a time.

A split that cannot be made soundly (a class too small to stratify, too few groups, a class with
no training image) stops with a :class:`SplitError` naming the problem, never a silent result.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from tasks.core.config import DataConfig
from tasks.core.errors import UserError


class SplitError(UserError, ValueError):
    """The accepted data cannot be split as configured."""


def assign_splits(manifest: pd.DataFrame, data: DataConfig, seed: int) -> pd.Series:
    """Stratified split; returns the split name for every row of `manifest`."""
    counts = manifest["label"].value_counts()
    if len(counts) < 2:
        raise SplitError(
            f"split: the accepted images hold {len(counts)} class(es) "
            f"({', '.join(map(str, counts.index))}); a classifier needs at least 2"
        )
    too_few = counts[counts < 3]
    if not too_few.empty:
        raise SplitError(
            f"split: class(es) {sorted(too_few.index)} have fewer than 3 accepted images "
            "(one per split is needed); add images or remove the class"
        )
    indices = np.arange(len(manifest))
    labels = manifest["label"].to_numpy()
    held_out = data.val_fraction + data.test_fraction
    if data.group_column:
        groups = manifest["group"].to_numpy()
        if (groups == "").any():
            raise SplitError(
                f"split: some images have no value in data.group_column={data.group_column!r}"
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
        except ValueError as error:  # a class too small for the fractions
            raise SplitError(
                f"split: cannot stratify {len(manifest)} images over {len(counts)} classes "
                f"with data.val_fraction={data.val_fraction} and "
                f"data.test_fraction={data.test_fraction} ({error}); add images to the "
                "smallest classes or raise the fractions"
            ) from None
    for name, part in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        if len(part) == 0:
            raise SplitError(f"split: the {name} split came out empty; add images or groups")
    missing = sorted(set(labels) - set(labels[train_idx]))
    if missing:
        raise SplitError(
            f"split: class(es) {missing} have no image in the train split (their groups were "
            "all held out); add groups for them or change the seed"
        )
    split = np.empty(len(manifest), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return pd.Series(split, index=manifest.index, name="split")


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
    except ValueError as error:
        raise SplitError(f"split: cannot divide the groups into {folds} folds ({error})") from None
    return indices[keep], indices[held]


def assign_folds(
    labels: np.ndarray, groups: np.ndarray | None, folds: int, seed: int
) -> np.ndarray:
    """A fold id (0..folds-1) per image, stratified by label (and grouped when groups are given)."""
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
