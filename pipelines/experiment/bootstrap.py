"""Percentile bootstrap intervals over episodes, the unit every comparison here resamples.

Episodes are independent draws of (scenario, seed); decision steps within one episode are not. So
intervals resample whole episodes: a per-episode value vector for a single policy, or per-episode
differences for two policies run on the same episodes (paired). The generator is seeded, so a
report's intervals are reproducible from its results.json: `rng.integers(0, n, (B, n))` indexes
the values, the B resampled means are taken, and their 2.5th and 97.5th percentiles are the bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0


def bootstrap_ci(values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% percentile interval; NaN bounds for fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    index = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    low, high = np.percentile(x[index].mean(axis=1), [2.5, 97.5])
    return mean, float(low), float(high)


def hierarchical_ci(groups: Sequence[Sequence[float]], resamples: int = RESAMPLES,
                    seed: int = SEED) -> tuple[float, float, float]:
    """(mean of group means, low, high) resampling groups, then values within each drawn group.

    For replicates of an experiment (one group per training pack): pooling their episodes into one
    vector would treat the packs as one and hide the variation between them; this keeps it. Each
    resample draws len(groups) groups with replacement, then each drawn group's values with
    replacement, and averages the group means."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if not arrays or any(len(a) == 0 for a in arrays):
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean([a.mean() for a in arrays]))
    if len(arrays) < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for b in range(resamples):
        picked = rng.integers(0, len(arrays), len(arrays))
        draws[b] = np.mean([arrays[i][rng.integers(0, len(arrays[i]), len(arrays[i]))].mean() for i in picked])
    low, high = np.percentile(draws, [2.5, 97.5])
    return mean, float(low), float(high)

