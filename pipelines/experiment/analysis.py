"""The comparison's numbers, a pure function of results.json: the primary measure first.

Pre-registered primary measure: the cause-weighted mean primary score on the shared evaluation set,
candidate - baseline, per replicate (an arm's value on an episode is the mean over its seeds; the
cause-weighted mean is the mean over causes of each cause's mean, so every cause counts the same
whatever the set's size). The R replicate values are independent draws of what varies between runs
of the pipeline (pack and models); the interval is the t-interval on them with R - 1 degrees of
freedom (replicates.t_interval), and the verdict reads that interval alone.

Secondary, labelled so: the other arm differences (each learned arm - the heuristic, candidate -
ablation, ...), the same difference per cause, the variance components of the per-episode primary
difference (replicate as a random intercept), and the offline measures. The reference policies
(heuristic, expert, never) play the same episodes in every replicate and are deterministic, so they
are one value per episode.

Power: from the between-replicate standard deviation of the primary difference, the replicates a
two-sided t-test needs for 80% power at 1 point and at half the measured ceiling (expert - baseline,
what knowing the cause is worth over the baseline's policy), and the minimum detectable effect of
this run's R.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from pipelines.experiment.replicates import (
    minimum_detectable_effect,
    replicates_for_power,
    t_interval,
    variance_components,
)

ARMS = ("baseline", "candidate", "ablation")
REFERENCES = ("heuristic", "expert", "never")
PRIMARY = ("candidate", "baseline")
SECONDARY = (("candidate", "ablation"), ("ablation", "baseline"), ("candidate", "heuristic"),
             ("baseline", "heuristic"), ("ablation", "heuristic"), ("heuristic", "never"), ("expert", "baseline"))
METHOD = ("t-interval over replicates: mean of the R per-replicate cause-weighted mean differences, "
          "+- t(0.975, R - 1) x sd(ddof=1) / sqrt(R)")
POWER = 0.8


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    cause = {int(e["index"]): e["cause"] for e in results["evaluation_set"]["episodes"]}
    scores = [_arm_scores(results, rep) for rep in results["replicates"]]
    per_replicate = {f"{a} - {b}": [_weighted(_paired(s[a], s[b]), cause) for s in scores]
                     for a, b in (PRIMARY, *SECONDARY)}
    pooled = {name: _interval(values) for name, values in per_replicate.items()}
    primary = f"{PRIMARY[0]} - {PRIMARY[1]}"
    arms = {arm: _interval([_weighted(s[arm], cause) for s in scores]) for arm in (*ARMS, *REFERENCES)}
    best = max(ARMS, key=lambda arm: arms[arm]["mean"])
    return {
        "replicates": len(scores),
        "method": METHOD,
        "primary_measure": f"cause-weighted mean primary score, {primary}",
        "primary": pooled[primary],
        "primary_per_replicate": per_replicate[primary],
        "arms": arms,
        "best_learned_arm": best,
        "best_learned_minus_heuristic": pooled[f"{best} - heuristic"],
        "secondary": {name: {**pooled[name], "per_replicate": per_replicate[name]}
                      for name in per_replicate if name != primary},
        "per_cause": _per_cause(scores, cause),
        "mixed_model": _mixed(scores),
        "power": _power(per_replicate[primary], pooled["expert - baseline"]["mean"]),
        "offline": _offline(results),
    }


def _arm_scores(results: dict[str, Any], replicate: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Per arm (and reference), per evaluation episode: the primary score, a mean over the arm's seeds."""
    online = results["online"]
    out = {ref: {int(e): v["score"] for e, v in online[ref].items()} for ref in REFERENCES}
    for arm in ARMS:
        seeds = [online[f"r{replicate['index']}/{name}"] for name in replicate["models"][arm]]
        out[arm] = {int(e): float(np.mean([s[e]["score"] for s in seeds])) for e in seeds[0]}
    return out


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {e: a[e] - b[e] for e in sorted(a) if e in b}


def _weighted(values: dict[int, float], cause: dict[int, str]) -> float:
    by: dict[str, list[float]] = defaultdict(list)
    for e, v in values.items():
        by[cause[e]].append(v)
    return float(np.mean([np.mean(v) for v in by.values()]))


def _interval(values: list[float]) -> dict[str, Any]:
    if len(values) < 2:
        return {"mean": float(np.mean(values)), "ci95": None}
    return t_interval(values).to_dict()


def _per_cause(scores: list[dict[str, dict[int, float]]], cause: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(set(cause.values())):
        chosen = [e for e in sorted(cause) if cause[e] == name]
        out[name] = {arm: _interval([float(np.mean([s[arm][e] for e in chosen])) for s in scores])
                     for arm in (*ARMS, *REFERENCES)}
        out[name]["candidate - baseline"] = _interval(
            [float(np.mean([s["candidate"][e] - s["baseline"][e] for e in chosen])) for s in scores])
    return out


def _mixed(scores: list[dict[str, dict[int, float]]]) -> dict[str, Any] | None:
    """Variance components of the per-episode primary difference, replicate as the random effect."""
    groups = {str(r): list(_paired(s["candidate"], s["baseline"]).values()) for r, s in enumerate(scores)}
    try:
        vc = variance_components(groups)
    except ValueError:
        return None
    return {"between_replicates": vc.between, "within_replicates": vc.within, "icc": vc.icc, "mean": vc.mean}


def _power(primary: list[float], ceiling: float) -> dict[str, Any]:
    sd = float(np.std(primary, ddof=1)) if len(primary) > 1 else math.nan
    usable = math.isfinite(sd)
    half = abs(ceiling) / 2
    return {"between_replicate_sd": sd if usable else None, "target_power": POWER, "ceiling": ceiling,
            "replicates_for_1_point": replicates_for_power(1.0, sd, POWER) if usable else None,
            "replicates_for_half_ceiling": replicates_for_power(half, sd, POWER) if usable and half else None,
            "minimum_detectable_effect": minimum_detectable_effect(sd, len(primary), POWER) if usable else None}


def _offline(results: dict[str, Any]) -> dict[str, Any]:
    """Each offline measure per arm: the mean over test episodes per replicate, then over replicates."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        measures = sorted({m for rep in results["replicates"] for m in rep["offline"][arm]})
        out[arm] = {m: _interval([float(np.mean(list(rep["offline"][arm][m].values())))
                                  for rep in results["replicates"] if rep["offline"][arm].get(m)])
                    for m in measures}
    return out
