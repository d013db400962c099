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
