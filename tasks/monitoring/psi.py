"""The population stability index of one image statistic: the drift verdict's effect size for
the image tests (`tasks.monitoring.drift`), over as many quantile bins as the sample sizes allow."""

from __future__ import annotations

import numpy as np

MAX_PSI_BINS = 10  # deciles of the reference, the usual PSI, once samples are large enough
PSI_NOISE_SHARE = 0.25  # PSI's own sampling noise may use at most this share of the threshold
PSI_PSEUDOCOUNT = 0.5  # added to every bin's count, so an empty bin gives no log(0)


def psi_bins(reference_size: int, served_size: int, threshold: float) -> int:
    """How many quantile bins PSI may use on samples of these sizes.

    For two samples of one distribution PSI is about (bins - 1) * (1/n_ref + 1/n_served) on
    average (it behaves like a chi-square statistic), so ten bins on 50 records would average
    0.2, the usual threshold, with no drift at all. The bins are as many as keep that noise
    under PSI_NOISE_SHARE of the threshold: against 270 reference images, 3 bins for 50 served
    records, 4 for 100, 6 for 200.
    """
    noise_per_bin = 1 / reference_size + 1 / served_size
    fitting = 1 + int(PSI_NOISE_SHARE * threshold / noise_per_bin)
    return int(np.clip(fitting, 2, MAX_PSI_BINS))


def psi(reference: np.ndarray, served: np.ndarray, bins: int) -> float:
    """The population stability index, sum((s - r) * ln(s / r)) over the reference's quantile
    bins. Values beyond the reference's largest get a bin of their own (a constant reference,
    such as the width of 8 px digits, then still sees 16 px uploads); bins empty on both sides
    are left out and a pseudocount keeps a bin empty on one side finite."""
    cuts = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    cuts = np.unique(np.append(cuts, np.nextafter(np.max(reference), np.inf)))
    counts = [
        np.bincount(np.searchsorted(cuts, values, side="right"), minlength=len(cuts) + 1)
        for values in (reference, served)
    ]
    reference_counts, served_counts = (c[(counts[0] + counts[1]) > 0] for c in counts)
    reference_share = _smoothed_shares(reference_counts)
    served_share = _smoothed_shares(served_counts)
    return float(np.sum((served_share - reference_share) * np.log(served_share / reference_share)))


def _smoothed_shares(counts: np.ndarray) -> np.ndarray:
    padded = counts + PSI_PSEUDOCOUNT
    return padded / padded.sum()
