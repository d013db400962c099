"""The comparison's report: results.json (every per-episode value), summary.json, report.md, one plot.

summary.json is `analysis.analyse(results.json)` and report.md prints summary.json's numbers with
two decimals (`mean [low, high]`, the 95% t-interval over replicates); nothing is computed here
that a reader cannot recompute from results.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.experiment.analysis import ARMS, REFERENCES, analyse
from telemetry import EsperError
from telemetry.packs import MANIFEST_NAME

MARKER = ".esper-compare"  # in a report folder: the design it was written with, so a rerun may resume


def claim_report_folder(out: Path, design: dict[str, Any]) -> None:
    """The report folder: absent, empty, or one an earlier `esper compare` of the same design wrote
    (it resumes there, with as many replicates as asked); never a pack or someone else's folder."""
    if out.is_symlink() and not out.exists():
        raise EsperError(f"--out {out}: a symbolic link to {os.readlink(out)!r}, which does not exist; "
                         "expected an absent or empty folder")
    if out.exists():
        if not out.is_dir():
            raise EsperError(f"--out {out}: exists and is not a folder; expected an absent or empty folder")
        if (out / MANIFEST_NAME).exists():
            raise EsperError(f"--out {out}: is a pack; --out is the report folder")
        if any(out.iterdir()):
            _same_design(out, design)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(design, sort_keys=True) + "\n", encoding="utf-8")


def _same_design(out: Path, design: dict[str, Any]) -> None:
    marker = out / MARKER
    if not marker.is_file():
        raise EsperError(f"--out {out}: exists, is not empty and was not written by `esper compare` (no "
                         f"{MARKER}); choose an absent or empty folder")
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        found = None
    if not isinstance(found, dict):
        raise EsperError(f"--out {out}: written by an earlier version of `esper compare`; choose another --out")
    changed = sorted(k for k in set(found) | set(design) if found.get(k) != design.get(k))
    if changed:
        key = changed[0]
        raise EsperError(f"--out {out}: holds a comparison with {key}={found.get(key)!r}, this run has "
                         f"{design.get(key)!r}; only --replicates, --pilot, --workers and the engine may change "
                         "when resuming: choose another --out")


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """results.json, summary.json, plots/primary.png and report.md under `out`; returns report.md's path."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    summary = analyse(results)
    summary["verdict"] = verdict(summary, results["settings"])
    (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    _plot(summary, out / "plots" / "primary.png")
    path = out / "report.md"
    path.write_text(markdown(summary, results))
    return path


# ---- the verdict ---------------------------------------------------------------------------------

def verdict(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """One paragraph on the primary measure (or, for a pilot, on the replicates a full run needs)."""
    p, power, r = summary["primary"], summary["power"], summary["replicates"]
    what = f"{settings['candidate']} - {settings['baseline']}, cause-weighted primary score"
    interval = f"{p['mean']:+.2f} points [95% t-interval {p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}] over {r} replicates"
    half = abs(power["ceiling"]) / 2
    plan = (f"detecting 1 point with 80% power needs {_count(power['replicates_for_1_point'])} replicates, half "
            f"the measured ceiling ({half:.2f} points) {_count(power['replicates_for_half_ceiling'])}; "
            f"this run's minimum detectable effect is {_points(power['minimum_detectable_effect'])}")
    if settings.get("pilot"):
        return f"Pilot: {what} {interval}; {plan}."
    low, high = p["ci95"]
    if low > 0 or high < 0:
        said = f"{settings['candidate']} features gave {'better' if low > 0 else 'worse'} policies"
    else:
        said = f"no detectable difference between {settings['candidate']} and {settings['baseline']} features"
    if low == high:
        said += " (every replicate gave the same value, so the interval has no width: run longer episodes)"
    best = summary["best_learned_minus_heuristic"]
    beat = (f"best learned arm ({summary['best_learned_arm']}) - heuristic {best['mean']:+.2f} "
            f"[{best['ci95'][0]:+.2f}, {best['ci95'][1]:+.2f}]")
    return f"Primary ({what}): {said}, {interval}. Secondary: {beat}. Power: {plan}."


def _count(n: int | None) -> str:
    return "more than 10,000" if n is None else f"{n}"


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} points"


# ---- markdown ------------------------------------------------------------------------------------

def ci(node: dict[str, Any], signed: bool = False) -> str:
    """`mean [low, high]` with two decimals."""
    sign = "+" if signed else ""
    if node["ci95"] is None:
        return f"{node['mean']:{sign}.2f} [n/a]"
    low, high = node["ci95"]
    return f"{node['mean']:{sign}.2f} [{low:{sign}.2f}, {high:{sign}.2f}]"


def markdown(summary: dict[str, Any], results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        f"# Does richer telemetry make a better policy? {s['candidate']} vs {s['baseline']}",
        "", f"Generated {results['created']} by `esper compare`{' (pilot)' if s.get('pilot') else ''}.",
        "", "## Verdict", "", summary["verdict"], "",
        *_setup(summary, results),
        "## Primary (pre-registered)", "",
        f"{summary['primary_measure']}: {ci(summary['primary'], signed=True)}. Method: {summary['method']}.", "",
        "| replicate | " + " | ".join(str(i) for i in range(summary["replicates"])) + " |",
        "|---|" + "---|" * summary["replicates"],
        "| candidate - baseline | " + " | ".join(f"{v:+.2f}" for v in summary["primary_per_replicate"]) + " |",
        "", "![per-replicate primary difference](plots/primary.png)", "",
        "## Secondary", "",
        "Cause-weighted mean primary score per arm (learned arms: over replicates; references play the same "
        "episodes in every replicate):", "",
        "| arm | score |", "|---|---|",
        *[f"| {arm} | {ci(summary['arms'][arm])} |" for arm in (*ARMS, *REFERENCES)],
        "", "| difference | mean [95% t-interval] |", "|---|---|",
        *[f"| {name} | {ci(node, signed=True)} |" for name, node in summary["secondary"].items()],
        "", *_per_cause(summary), *_power(summary), *_offline(summary), "",
    ]
    return "\n".join(lines)


def _setup(summary: dict[str, Any], results: dict[str, Any]) -> list[str]:
    s, t, reps = results["settings"], results["settings"]["train"], results["replicates"]
    ev = results["evaluation_set"]
    return [
        "## Setup", "",
        f"- {summary['replicates']} replicates; replicate r trains on its own pack (run seed {s['seed']} + r, "
        f"{s['episodes']} episodes, {s['candidate']} profile, dataset {s['dataset']}, {s['epochs']} epochs, "
        f"counterfactual fraction {s['counterfactual_fraction']})",
        f"- arms: baseline `{s['baseline']}` ({reps[0]['features']['baseline']} features), candidate "
        f"`{s['candidate']}` ({reps[0]['features']['candidate']}), ablation `{s['ablation']}` "
        f"({reps[0]['features']['ablation']}); target `{s['target']}`, {s['seeds']} model(s) per arm, "
        f"{t['model']} {t['layers']}x{t['hidden']}, up to {t['max_epochs']} epochs, patience {t['patience']}",
        f"- evaluation: {len(ev['episodes'])} shared episodes, {ev['per_cause']} per cause, seed namespace "
        f"{ev['seed']} (disjoint from every pack); score = each episode's primary score", "",
    ]


def _per_cause(summary: dict[str, Any]) -> list[str]:
    names = (*ARMS, *REFERENCES, "candidate - baseline")
    return ["### Per cause (mean primary score over episodes of the cause, interval over replicates)", "",
            "| cause | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            *[f"| {cause} | " + " | ".join(ci(row[n], signed=n.endswith("baseline") and " - " in n) for n in names)
              + " |" for cause, row in summary["per_cause"].items()], ""]


def _power(summary: dict[str, Any]) -> list[str]:
    p, m = summary["power"], summary["mixed_model"]
    lines = ["### Power", "",
             f"Between-replicate sd of the primary difference: {_points(p['between_replicate_sd'])}. Replicates "
             f"for 80% power: {_count(p['replicates_for_1_point'])} at 1 point, "
             f"{_count(p['replicates_for_half_ceiling'])} at half the ceiling (expert - baseline = "
             f"{p['ceiling']:.2f}); minimum detectable effect at R = {summary['replicates']}: "
             f"{_points(p['minimum_detectable_effect'])}.", ""]
    if m is not None:
        lines += [f"Mixed model (replicate as a random intercept, method of moments): between-replicate variance "
                  f"{m['between_replicates']:.2f}, within {m['within_replicates']:.2f}, ICC {m['icc']:.2f}.", ""]
    return lines


def _offline(summary: dict[str, Any]) -> list[str]:
    measures = sorted({m for arm in ARMS for m in summary["offline"][arm]})
    return ["### Offline, on each replicate's test episodes (share or points; interval over replicates)", "",
            "| arm | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures),
            *[f"| {arm} | " + " | ".join(ci(summary["offline"][arm][m]) if m in summary["offline"][arm] else "n/a"
                                        for m in measures) + " |" for arm in ARMS]]


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = summary["primary_per_replicate"]
    figure, ax = plt.subplots(figsize=(7, 3))
    ax.scatter(values, range(len(values)), color="#4C72B0", label="replicate")
    p = summary["primary"]
    if p["ci95"] is not None:
        ax.errorbar(p["mean"], -1, xerr=[[p["mean"] - p["ci95"][0]], [p["ci95"][1] - p["mean"]]], fmt="o",
                    color="#C44E52", capsize=4, label="pooled, 95% t-interval")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks([-1, *range(len(values))], ["pooled", *[f"r{i}" for i in range(len(values))]])
    ax.set_xlabel("candidate - baseline, cause-weighted primary score (points)")
    ax.legend(loc="best", fontsize=8)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
