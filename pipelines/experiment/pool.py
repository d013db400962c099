"""Replicates of `esper compare` read together: one answer that keeps the pack-to-pack variation.

    esper pool runs/compare-seed0 runs/compare-seed2 runs/compare-seed4

Each replicate is a whole comparison on its own training pack and its own fresh episodes. The
replicates must compare the same arms on the same target; only the run seed may differ. Every
measure is reported per replicate and pooled: the mean of the replicate means with a hierarchical
bootstrap interval (`bootstrap.hierarchical_ci`: replicates resampled, then episodes within each),
because the replicates show that the training pack, not the episode, is the larger source of
variation. With few replicates that interval is wide; that is the honest width.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipelines.experiment.bootstrap import RESAMPLES, SEED, hierarchical_ci
from pipelines.experiment.compare import FORMAT
from pipelines.experiment.report import ci
from telemetry import EsperError, read_json

# (label, path into results.json to a summary with by_episode, scale for printing)
MEASURES = (
    ("online final accuracy, candidate - baseline (points)", ("online", "differences", "candidate - baseline",
                                                              "final_accuracy"), 1.0),
    ("online final accuracy, candidate - heuristic (points)", ("online", "differences", "candidate - heuristic",
                                                               "final_accuracy"), 1.0),
    ("online final accuracy, baseline - heuristic (points)", ("online", "differences", "baseline - heuristic",
                                                              "final_accuracy"), 1.0),
    ("offline oracle agreement, candidate - baseline (pp)", ("offline", "oracle_agreement", "candidate - baseline"),
     100.0),
    ("offline regret, candidate - baseline (points)", ("offline", "regret", "candidate - baseline"), 1.0),
    ("cause probe accuracy, candidate - baseline (pp)", ("offline", "cause_probe", "candidate - baseline"), 100.0),
)
SAME = ("baseline", "candidate", "target", "dataset", "epochs", "episodes", "seeds", "online_episodes")


class PoolError(EsperError):
    """Reports that cannot be read together."""


def read_results(folder: str | Path) -> dict[str, Any]:
    """A replicate's results.json, bounded in size and depth, with every value `pool` reads checked."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise PoolError(f"{folder}: no results.json; expected a folder written by `esper compare`")
    results = read_json(path, PoolError)
    if not isinstance(results, dict) or results.get("format") != FORMAT:
        raise PoolError(f"{path}: not an `esper compare` result (format {FORMAT!r} expected)")
    settings = results.get("settings")
    if not isinstance(settings, dict) or not isinstance(settings.get("seed"), int):
        raise PoolError(f"{path}: 'settings' is missing or has no integer 'seed'; expected a results.json "
                        "written by `esper compare`")
    for _, keys, _ in MEASURES:
        _check_summary(_at(results, keys, path), ".".join(keys), path)
    return results


def _check_summary(node: Any, where: str, path: Path) -> None:
    expected = "expected a summary written by `esper compare`"
    if not isinstance(node, dict):
        raise PoolError(f"{path}: {where} is not an object; {expected}")
    values = node.get("by_episode")
    if not isinstance(values, dict) or not values or not all(_finite(v) for v in values.values()):
        raise PoolError(f"{path}: {where}.by_episode is missing, empty or holds a value that is not a finite "
                        f"number; {expected}")
    for key in ("mean", "low", "high"):
        if node.get(key) is not None and not _finite(node.get(key)):
            raise PoolError(f"{path}: {where}.{key} is {node.get(key)!r}; {expected}")


def _finite(value: Any) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def pool(reports: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per-replicate and pooled summaries of every measure; refuses replicates of different designs."""
    if len(reports) < 2:
        raise PoolError(f"pool needs at least 2 replicates, got {len(reports)}")
    first = reports[0]["settings"]
    for name, report in zip(names[1:], reports[1:], strict=True):
        for key in SAME:
            if report["settings"].get(key) != first.get(key):
                raise PoolError(f"{name}: {key}={report['settings'].get(key)!r}, but {names[0]} has "
                                f"{first.get(key)!r}; replicates must differ in --seed only")
    seeds = [r["settings"]["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise PoolError(f"replicates share a run seed ({seeds}); each must have its own --seed")
    _refuse_identical(reports, names)
    measures = {}
    for label, path, scale in MEASURES:
        groups = [list(_at(r, path)["by_episode"].values()) for r in reports]
        mean, low, high = hierarchical_ci(groups)
        summaries = [{k: v for k, v in _at(r, path).items() if k != "by_episode"} for r in reports]
        measures[label] = {"scale": scale, "replicates": summaries,
                           "pooled": {"mean": mean, "low": low, "high": high, "replicates": len(groups),
                                      "episodes": sum(len(g) for g in groups)}}
    return {"replicates": names, "seeds": seeds, "settings": {k: first.get(k) for k in SAME},
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "method": "hierarchical: replicates, then episodes"},
            "measures": measures}


def _at(results: dict[str, Any], keys: tuple[str, ...], path: Path | None = None) -> Any:
    node: Any = results
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise PoolError(f"{path or 'results.json'}: no {'.'.join(keys[:i + 1])!r}; expected a results.json "
                            "written by `esper compare`")
        node = node[key]
    return node


def _refuse_identical(reports: list[dict[str, Any]], names: list[str]) -> None:
    """Two replicates with the same per-episode values are one experiment counted twice (a report
    copied, or a comparison that reused one pack under two seeds): pooling them narrows the interval
    for nothing."""
    seen: dict[str, str] = {}
    for name, report in zip(names, reports, strict=True):
        data = json.dumps([_at(report, keys)["by_episode"] for _, keys, _ in MEASURES], sort_keys=True)
        if data in seen:
            raise PoolError(f"{name} and {seen[data]} hold identical per-episode values: the same data twice, "
                            "not two replicates (each replicate needs its own training pack and episodes)")
        seen[data] = name


def markdown(pooled: dict[str, Any]) -> str:
    seeds = pooled["seeds"]
    header = "| measure | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled (hierarchical) |"
    lines = [header, "|---|" + "---|" * (len(seeds) + 1)]
    for label, m in pooled["measures"].items():
        k = m["scale"]
        cells = [ci(summary, k, signed=True) for summary in (*m["replicates"], m["pooled"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", verdict(pooled)])


def verdict(pooled: dict[str, Any]) -> str:
    m = pooled["measures"][MEASURES[0][0]]["pooled"]
    s = pooled["settings"]
    interval = f"{m['mean']:+.2f} points [95% CI {m['low']:+.2f}, {m['high']:+.2f}]"
    where = f"over {m['replicates']} replicates ({m['episodes']} fresh episodes)"
    if m["low"] > 0 or m["high"] < 0:
        direction = "higher" if m["low"] > 0 else "lower"
        return (f"Pooled {where}, {s['candidate']} features gave {direction} final host accuracy than "
                f"{s['baseline']}: {interval}.")
    return (f"Pooled {where}, no detectable difference in final host accuracy between {s['candidate']} and "
            f"{s['baseline']} features: {interval}, an interval that includes zero.")

