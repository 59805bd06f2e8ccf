"""The kernel two-sample test on embeddings (maximum mean discrepancy), with its permutation
p-value: the costly test of a drift check, kept apart from the cheap ones in `drift`.

numpy only. Every permutation's MMD^2 comes from one matrix product of the kernel with the
split indicators, a chunk of permutations at a time, so thousands of permutations (what Holm's
correction needs: the p-value is never below 1 / (permutations + 1)) cost a few kernel
products, not thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERMUTATION_CHUNK = 256  # permutations evaluated per matrix product (memory: n x chunk floats)


@dataclass(frozen=True)
class MmdResult:
    statistic: float  # the unbiased MMD^2 of the two samples
    p_value: float  # (1 + permutations at least as large) / (1 + permutations)
    reference: int  # points per side after subsampling
    served: int
    bandwidth: float  # the RBF kernel's width: the median distance between pooled points


def mmd_permutation_test(
    reference: np.ndarray, served: np.ndarray, permutations: int, max_samples: int, seed: int
) -> MmdResult:
    """The unbiased MMD^2 with an RBF kernel whose width is the median distance between the
    pooled points, and its permutation p-value. At most `max_samples` points per side (a seeded
    subsample): the kernel matrix is n^2."""
    generator = np.random.default_rng(seed)
    x = _subsample(np.asarray(reference, np.float64), max_samples, generator)
    y = _subsample(np.asarray(served, np.float64), max_samples, generator)
    pooled = np.concatenate([x, y])
    squared = np.maximum(_squared_distances(pooled), 0.0)
    n, first = len(pooled), len(x)
    median = float(np.median(squared[~np.eye(n, dtype=bool)]))
    kernel = np.exp(-squared / (2.0 * median if median > 0 else 1.0))
    row_sums = kernel.sum(axis=1)
    observed = _mmd_of_splits(kernel, row_sums, first, np.arange(n)[:, None] < first)[0]
    exceeded = 0
    for start in range(0, permutations, PERMUTATION_CHUNK):
        count = min(PERMUTATION_CHUNK, permutations - start)
        orders = np.argsort(generator.random((n, count)), axis=0)  # a permutation per column
        members = orders < first
        exceeded += int(np.sum(_mmd_of_splits(kernel, row_sums, first, members) >= observed))
    p_value = (1 + exceeded) / (1 + permutations)
    return MmdResult(float(observed), p_value, len(x), len(y), float(np.sqrt(median)))


def _subsample(points: np.ndarray, limit: int, generator: np.random.Generator) -> np.ndarray:
    if len(points) <= limit:
        return points
    return points[np.sort(generator.choice(len(points), limit, replace=False))]


def _squared_distances(points: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", points, points)
    return norms[:, None] + norms[None, :] - 2.0 * points @ points.T


def _mmd_of_splits(
    kernel: np.ndarray, row_sums: np.ndarray, first: int, members: np.ndarray
) -> np.ndarray:
    """Unbiased MMD^2 for each column of `members` (n x P booleans: True = in the first sample,
    `first` of them per column). The kernel's diagonal (1 for RBF) is left out of the sums."""
    inside = members.astype(np.float64)
    second = len(kernel) - first
    towards_first = kernel @ inside  # (n, P): each point's kernel sum over the first sample
    within_first = np.sum(inside * towards_first, axis=0) - first
    across = np.sum(inside * (row_sums[:, None] - towards_first), axis=0)
    within_second = np.sum((1 - inside) * (row_sums[:, None] - towards_first), axis=0) - second
    return (
        within_first / (first * (first - 1))
        + within_second / (second * (second - 1))
        - 2.0 * across / (first * second)
    )
