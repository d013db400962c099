"""The control check's answer: per strategy and cause the mean primary score with a 95% interval, and
the paired differences that say whether knowing the cause is worth anything.

- `value_of_knowing_cause`: per episode, the score of its cause's best cause-blind strategy (chosen
  in hindsight from the per-cause means) minus the score of the best cause-blind strategy overall;
  mean and 95% t-interval over episodes. What a policy that infers the cause could win over the best
  policy that cannot.
- `heuristic_minus_never`, `oracle_minus_best_cause_blind`: the same kind of paired difference.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from scipy import stats

from pipelines.environment.scenarios import SCENARIOS
from pipelines.experiment.control_check import CAUSE_BLIND, STRATEGIES


def mean_ci(values: list[float]) -> dict[str, Any]:
    """{"mean": m, "ci95": [lo, hi]}, a t-interval (null bounds with fewer than two values)."""
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "ci95": [None, None]}
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": m, "ci95": [m - half, m + half]}


def analyse(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON object `esper control-check --json` prints (see the module docstring)."""
    score: dict[int, dict[str, float]] = defaultdict(dict)
    cause: dict[int, str] = {}
    for r in results:
        score[r["episode"]][r["strategy"]] = r["score"]
        cause[r["episode"]] = r["cause"]
    names = [s for s in STRATEGIES if any(s in v for v in score.values())]
    blind = [s for s in names if s in CAUSE_BLIND]
    episodes = sorted(e for e in score if all(s in score[e] for s in names))
    causes = [c for c in SCENARIOS if any(cause[e] == c for e in episodes)]
    overall = {s: mean_ci([score[e][s] for e in episodes]) for s in names}
    per_cause = {c: {s: mean_ci([score[e][s] for e in episodes if cause[e] == c]) for s in names} for c in causes}
    best_blind = max(blind, key=lambda s: overall[s]["mean"])
    best = {c: max(blind, key=lambda s: per_cause[c][s]["mean"]) for c in causes}
    out: dict[str, Any] = {
        "episodes": len(episodes),
        "per_cause_episodes": {c: sum(cause[e] == c for e in episodes) for c in causes},
        "score": "primary: held-out test accuracy (%) - param_cost x seed parameter-epochs",
        "strategies": names, "overall": overall, "per_cause": per_cause,
        "best_cause_blind": best_blind, "best_per_cause_in_hindsight": best,
        "value_of_knowing_cause": mean_ci([score[e][best[cause[e]]] - score[e][best_blind] for e in episodes]),
        "seconds_per_episode": {s: float(np.mean([r["seconds"] for r in results if r["strategy"] == s]))
                                for s in names},
    }
    if "heuristic" in names:
        out["heuristic_minus_never"] = mean_ci([score[e]["heuristic"] - score[e]["never"] for e in episodes])
    if "oracle" in names:
        out["oracle_minus_best_cause_blind"] = mean_ci([score[e]["oracle"] - score[e][best_blind] for e in episodes])
    return out


def _interval(a: dict[str, Any], key: str) -> str:
    m, (lo, hi) = a[key]["mean"], a[key]["ci95"]
    return f"{m:+.2f}" if lo is None else f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def text(a: dict[str, Any]) -> str:
    """The analysis as a table for a person."""
    names = a["strategies"]
    head = f"{'cause':<20} {'n':>3} " + " ".join(f"{s:>9}" for s in names) + "  best cause-blind (hindsight)"
    lines = [head, "-" * len(head)]
    for c, row in a["per_cause"].items():
        lines.append(f"{c:<20} {a['per_cause_episodes'][c]:>3} " + " ".join(f"{row[s]['mean']:9.2f}" for s in names)
                     + f"  {a['best_per_cause_in_hindsight'][c]}")
    lines.append(f"{'all':<20} {a['episodes']:>3} " + " ".join(f"{a['overall'][s]['mean']:9.2f}" for s in names))
    lines.append(f"{'s per episode':<24}" + " ".join(f"{a['seconds_per_episode'][s]:9.2f}" for s in names))
    lines += ["", f"score: {a['score']}", f"best cause-blind strategy: {a['best_cause_blind']}",
              "value_of_knowing_cause (per-cause best - best cause-blind, paired): "
              + _interval(a, "value_of_knowing_cause")]
    for key, label in (("heuristic_minus_never", "heuristic - never"),
                       ("oracle_minus_best_cause_blind", "oracle - best cause-blind")):
        if key in a:
            lines.append(f"{label}: {_interval(a, key)}")
    return "\n".join(lines)
