"""Inference over replicates of an experiment: the t-interval, power, and a variance-components view.

A replicate is one whole run of the comparison: its own training pack and its own trained models,
evaluated on the shared evaluation set. Its primary difference (candidate - baseline) is one number;
the R replicate means are independent draws, so the interval for the pooled primary is a
t-interval with R - 1 degrees of freedom on those means. Episodes inside a replicate are not
independent draws of what varies between replicates (the pack and the models), which is why the
episodes are averaged first and never pooled flat.

The same numbers plan the experiment: from the between-replicate standard deviation a pilot run
measures, `replicates_for_power` gives the R a two-sided one-sample t-test needs to detect an effect
with a given power (noncentral t, exact rather than the normal approximation), and
`minimum_detectable_effect` gives what R replicates can detect.

`variance_components` is the secondary, mixed-model view of the per-episode values: a one-way
random-effects model (replicate as a random intercept), estimated by the ANOVA method of moments,
which gives the share of the variance that lies between replicates (the intraclass correlation).

scipy is imported by the two functions that use it: every `esper` command of the pipelines imports
this module (the compare command's defaults feed the help text), and `scipy.stats` alone takes half a
second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "ci95": [self.low, self.high]}


def t_interval(means: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of the replicate means with its t-interval (R - 1 degrees of freedom)."""
    x = np.asarray(means, dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"a t-interval needs at least 2 replicates, got {x.size}")
    from scipy import stats

    m = float(x.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(m, m - half, m + half)


def power(effect: float, sd: float, replicates: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t-test on `replicates` means whose sd is `sd`."""
    if replicates < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if effect else 0.0
    from scipy import stats

    df = replicates - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = effect / (sd / math.sqrt(replicates))
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def replicates_for_power(effect: float, sd: float, target: float = 0.8, alpha: float = 0.05,
                         most: int = 10_000) -> int | None:
    """The fewest replicates (>= 2) whose t-test detects `effect` with at least `target` power."""
    if effect == 0 or sd <= 0:
        return None if effect == 0 else 2
    for r in range(2, most + 1):
        if power(abs(effect), sd, r, alpha) >= target:
            return r
    return None


def minimum_detectable_effect(sd: float, replicates: int, target: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest effect R replicates detect with `target` power (bisection on `power`)."""
    if replicates < 2:
        return math.inf
    if sd <= 0:  # replicates that agree exactly: any effect shows (short runs where nothing happens)
        return 0.0
    low, high = 0.0, sd
    while power(high, sd, replicates, alpha) < target:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid, sd, replicates, alpha) < target else (low, mid)
    return high


@dataclass(frozen=True)
class VarianceComponents:
    between: float  # variance of the replicate effects
    within: float  # variance of episodes inside a replicate
    icc: float  # between / (between + within)
    mean: float  # grand mean (mean of replicate means)


def variance_components(by_replicate: Mapping[str, Sequence[float]]) -> VarianceComponents:
    """One-way random effects by the method of moments (unbalanced groups allowed; negative between = 0)."""
    groups = [np.asarray(v, dtype=np.float64) for v in by_replicate.values() if len(v)]
    k, n = len(groups), sum(g.size for g in groups)
    if k < 2 or n <= k:
        raise ValueError("variance components need at least 2 replicates and more episodes than replicates")
    grand = np.concatenate(groups).mean()
    ss_between = sum(g.size * (g.mean() - grand) ** 2 for g in groups)
    ss_within = sum(((g - g.mean()) ** 2).sum() for g in groups)
    ms_between, ms_within = ss_between / (k - 1), ss_within / (n - k)
    n0 = (n - sum(g.size**2 for g in groups) / n) / (k - 1)
    between = max(0.0, (ms_between - ms_within) / n0)
    total = between + ms_within
    return VarianceComponents(float(between), float(ms_within), float(between / total) if total else 0.0,
                              float(np.mean([g.mean() for g in groups])))
