"""The comparison's report: results.json (every per-episode value), report.md, plots, one verdict.

Numbers in report.md are results.json's summaries printed with two decimals (accuracy points, or
percent for agreement and probe scores): `mean [low, high]`, the 95% bootstrap interval over
episodes. Nothing in the report is computed here that is not in results.json, so anyone can check
it against the per-episode values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from telemetry import EsperError
from telemetry.packs import MANIFEST_NAME

ARM_ORDER = ("baseline", "candidate", "heuristic", "never")
COLOURS = {"baseline": "#4C72B0", "candidate": "#DD8452", "heuristic": "#55A868", "never": "#8C8C8C"}
MARKER = ".esper-compare"  # in a report folder: written by `esper compare`, so a rerun may resume there


def claim_report_folder(out: Path) -> None:
    """The report folder: absent, empty, or one an earlier `esper compare` wrote (it resumes there);
    never a pack or a folder of someone else's, which models, plots and reports would be mixed into."""
    if out.is_symlink() and not out.exists():
        raise EsperError(f"--out {out}: a symbolic link to {os.readlink(out)!r}, which does not exist; "
                         "expected an absent or empty folder")
    if out.exists():
        if not out.is_dir():
            raise EsperError(f"--out {out}: exists and is not a folder; expected an absent or empty folder")
        if (out / MANIFEST_NAME).exists():
            raise EsperError(f"--out {out}: is a pack; --out is the report folder (--pack reuses a pack)")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise EsperError(f"--out {out}: exists, is not empty and was not written by `esper compare` (no "
                             f"{MARKER}); choose an absent or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("esper-compare\n", encoding="utf-8")


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """results.json, plots/*.png and report.md under `out`; returns report.md's path."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    results = {**results, "verdict": verdict(results)}
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    plots = _plots(results, out / "plots")
    path = out / "report.md"
    path.write_text(_markdown(results, plots))
    return path


# ---- the verdict ---------------------------------------------------------------------------------

def verdict(results: dict[str, Any]) -> str:
    """One sentence on the primary measure, online final accuracy (candidate - baseline, paired)."""
    arms = results["arms"]
    cand, base = arms["candidate"]["features"], arms["baseline"]["features"]
    diff = results["online"]["differences"]["candidate - baseline"]["final_accuracy"]
    n, seeds = diff["n"], len(arms["candidate"]["models"])
    where = f"on {n} fresh episodes ({seeds} training seed{'s' if seeds > 1 else ''} per arm)"
    if diff["low"] is None:
        return (f"Too few episodes to say whether {cand} features help: {where}, the difference in final "
                f"accuracy is {diff['mean']:+.2f} points with no interval.")
    interval = f"{diff['mean']:+.2f} points [95% CI {diff['low']:+.2f}, {diff['high']:+.2f}]"
    offline = results["offline"]["oracle_agreement"]["candidate - baseline"]
    agreement = ("" if offline["low"] is None else
                 f"; offline, agreement with the oracle changed by {100 * offline['mean']:+.1f} percentage points "
                 f"[{100 * offline['low']:+.1f}, {100 * offline['high']:+.1f}]")
    if diff["low"] > 0:
        return (f"Policies trained on {cand} features reached higher final host accuracy than those trained on "
                f"{base} features {where}: {interval}{agreement}.")
    if diff["high"] < 0:
        return (f"Policies trained on {cand} features reached lower final host accuracy than those trained on "
                f"{base} features {where}: {interval}{agreement}.")
    return (f"No detectable difference in final host accuracy between policies trained on {cand} and on {base} "
            f"features {where}: {interval}, an interval that includes zero{agreement}.")


# ---- markdown ------------------------------------------------------------------------------------

def ci(summary: dict[str, Any], scale: float = 1.0, signed: bool = False) -> str:
    """`mean [low, high]` with two decimals; n/a where a bound is missing."""
    if summary["mean"] is None:
        return "n/a"
    sign = "+" if signed else ""
    mean = f"{scale * summary['mean']:{sign}.2f}"
    if summary["low"] is None:
        return f"{mean} [n/a]"
    return f"{mean} [{scale * summary['low']:{sign}.2f}, {scale * summary['high']:{sign}.2f}]"


def _markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    s, arms, online, offline = results["settings"], results["arms"], results["online"], results["offline"]
    lines = [
        f"# Does richer telemetry make a better policy? {s['candidate']} vs {s['baseline']}",
        "",
        f"Generated {results['created']} by `esper compare`.",
        "",
        "## Verdict",
        "",
        results["verdict"],
        "",
        *_setup(results),
        "## Online: policies driving fresh episodes",
        "",
        f"{len(online['episodes'])} episodes, the same for every policy (new seeds, the pack's scenario mix); "
        "a learned arm's value per episode is the mean over its seeds. Mean [95% bootstrap CI over episodes].",
        "",
        "| policy | final accuracy (%) | seeds fossilized | parameters added |",
        "|---|---|---|---|",
        *[f"| {_label(arm, arms)} | {ci(m['final_accuracy'])} | {ci(m['fossilized'])} | {ci(m['params_added'])} |"
          for arm, m in ((a, online["arms"][a]) for a in ARM_ORDER)],
        "",
        "Paired differences (same episodes):",
        "",
        "| comparison | final accuracy (points) | seeds fossilized | parameters added |",
        "|---|---|---|---|",
        *[f"| {name} | {ci(d['final_accuracy'], signed=True)} | {ci(d['fossilized'], signed=True)} | "
          f"{ci(d['params_added'], signed=True)} |" for name, d in online["differences"].items()],
        "",
        f"![final accuracy per policy]({plots['online']}) ![paired differences]({plots['differences']})",
        "",
        "### Per hidden cause (final accuracy, %)",
        "",
        "| cause | n | " + " | ".join(ARM_ORDER) + " | candidate - baseline |",
        "|---|---|" + "---|" * (len(ARM_ORDER) + 1),
        *[f"| {cause} | {row['baseline']['n']} | " + " | ".join(ci(row[a]) for a in ARM_ORDER)
          + f" | {ci(row['candidate - baseline'], signed=True)} |" for cause, row in online["per_cause"].items()],
        "",
        f"![final accuracy per cause]({plots['per_cause']})",
        "",
        *_offline(offline, arms),
        f"![offline scores]({plots['offline']})",
        "",
        "## Method",
        "",
        f"Intervals: {results['bootstrap']['method']} (resamples {results['bootstrap']['resamples']}, seed "
        f"{results['bootstrap']['seed']}). Every per-episode value behind every number here is in results.json.",
        "",
    ]
    return "\n".join(lines)


def _setup(results: dict[str, Any]) -> list[str]:
    s, pack, arms = results["settings"], results["pack"], results["arms"]
    t = s["train"]
    return [
        "## Setup",
        "",
        f"- pack: `{pack['path']}` ({pack['profile']} profile, {pack['episodes']} episodes "
        f"{pack['episodes_per_split']}, {pack['steps']} steps), dataset {pack['generation']['dataset']}, "
        f"{pack['generation']['epochs']} epochs per episode",
        f"- target: `{s['target']}`; {s['seeds']} seed{'s' if s['seeds'] != 1 else ''} per arm; "
        f"MLP {t['layers']}x{t['hidden']}, AdamW lr {t['lr']}, "
        f"up to {t['max_epochs']} epochs, patience {t['patience']}, class-weighted loss",
        f"- baseline: `{arms['baseline']['features']}` ({arms['baseline']['n_features']} features); candidate: "
        f"`{arms['candidate']['features']}` ({arms['candidate']['n_features']} features)",
        f"- online: {s['online_episodes']} fresh episodes per policy, greedy heuristic and never-germinate as "
        "references",
        "",
    ]


def _offline(offline: dict[str, Any], arms: dict[str, Any]) -> list[str]:
    agreement, regret, probe = offline["oracle_agreement"], offline["regret"], offline["cause_probe"]
    rows = [(arm, agreement[arm], regret[arm], probe[arm], probe["balanced_accuracy"][arm]) for arm in
            ("baseline", "candidate")]
    diff = ("candidate - baseline", agreement["candidate - baseline"], regret["candidate - baseline"],
            probe["candidate - baseline"], None)
    out = [
        "## Offline: held-out test episodes",
        "",
        f"{offline['test_steps_with_oracle_label']} test steps carry a counterfactual label. Oracle agreement: "
        "share of those steps where the policy picks the best rollout's action; regret: rollout accuracy of "
        "the best action minus the policy's choice (points, lower is better); cause probe: share of test "
        "steps whose hidden scenario a logistic regression on the arm's features names correctly "
        f"({len(probe['classes'])} causes).",
        "",
        "| arm | oracle agreement (%) | regret (points) | cause probe (%) | probe balanced accuracy (%) |",
        "|---|---|---|---|---|",
    ]
    for arm, a, r, p, b in rows:
        out.append(f"| {_label(arm, arms)} | {ci(a, 100)} | {ci(r)} | {ci(p, 100)} | {100 * b:.2f} |")
    name, a, r, p, _ = diff
    out += [f"| {name} | {ci(a, 100, True)} | {ci(r, signed=True)} | {ci(p, 100, True)} | |", "",
            "Each model on its own training target (balanced accuracy, %):", "",
            "| model | val | test |", "|---|---|---|"]
    for model, scores in offline["models"].items():
        ev = scores["evaluation"] or {}
        out.append(f"| {model} | {_pct(ev.get('val'))} | {_pct(ev.get('test'))} |")
    return [*out, ""]


def _pct(report: dict[str, Any] | None) -> str:
    value = None if report is None else report.get("balanced_accuracy")
    return "n/a" if value is None else f"{100 * value:.2f}"


def _label(arm: str, arms: dict[str, Any]) -> str:
    return f"{arm} ({arms[arm]['features']})" if arm in arms else arm


# ---- plots ---------------------------------------------------------------------------------------

def _plots(results: dict[str, Any], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for name, draw in (("online", _online_plot), ("differences", _differences_plot), ("per_cause", _cause_plot),
                       ("offline", _offline_plot)):
        figure = draw(plt, results)
        figure.savefig(folder / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths[name] = f"plots/{name}.png"
    return paths


def _online_plot(plt: Any, results: dict[str, Any]) -> Any:
    import numpy as np

    arms = results["online"]["arms"]
    figure, ax = plt.subplots(figsize=(7, 4))
    values = [list(arms[a]["final_accuracy"]["by_episode"].values()) for a in ARM_ORDER]
    ax.boxplot(values, tick_labels=list(ARM_ORDER), showfliers=False)
    jitter = np.random.default_rng(0)
    for i, (arm, v) in enumerate(zip(ARM_ORDER, values, strict=True), start=1):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(v)), v, s=10, alpha=0.6, color=COLOURS[arm])
    ax.set_ylabel("final host accuracy (%)")
    ax.set_title("Final accuracy per policy on the same fresh episodes")
    return figure


def _differences_plot(plt: Any, results: dict[str, Any]) -> Any:
    """Paired differences in final accuracy: each episode's value, the mean and its interval."""
    differences = results["online"]["differences"]
    names = list(differences)[::-1]
    figure, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.2))
    for i, name in enumerate(names):
        s = differences[name]["final_accuracy"]
        ax.scatter(list(s["by_episode"].values()), [i] * s["n"], s=8, alpha=0.3, color="#8C8C8C")
        if s["low"] is not None:
            ax.errorbar(s["mean"], i, xerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]], fmt="o",
                        color="#C44E52", capsize=4)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("difference in final accuracy (points), per episode; mean and 95% CI in red")
    ax.set_title("Paired differences on the same fresh episodes")
    return figure


def _cause_plot(plt: Any, results: dict[str, Any]) -> Any:
    per_cause = results["online"]["per_cause"]
    causes = list(per_cause)
    figure, ax = plt.subplots(figsize=(max(6, 1.6 * len(causes)), 4))
    width = 0.8 / len(ARM_ORDER)
    for j, arm in enumerate(ARM_ORDER):
        means = [per_cause[c][arm]["mean"] for c in causes]
        errors = [[m - (per_cause[c][arm]["low"] if per_cause[c][arm]["low"] is not None else m) for c, m in
                   zip(causes, means, strict=True)],
                  [(per_cause[c][arm]["high"] if per_cause[c][arm]["high"] is not None else m) - m for c, m in
                   zip(causes, means, strict=True)]]
        ax.bar([i + j * width for i in range(len(causes))], means, width, yerr=errors, capsize=2,
               label=arm, color=COLOURS[arm])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(causes))], causes, rotation=20, ha="right")
    ax.set_ylabel("final host accuracy (%)")
    ax.set_title("Final accuracy per hidden cause (95% bootstrap CI)")
    ax.legend(fontsize=8)
    return figure


def _offline_plot(plt: Any, results: dict[str, Any]) -> Any:
    offline = results["offline"]
    panels = (("oracle agreement (%)", offline["oracle_agreement"], 100),
              ("regret (points)", offline["regret"], 1), ("cause probe (%)", offline["cause_probe"], 100))
    figure, axes = plt.subplots(1, len(panels), figsize=(10, 3.5))
    for ax, (title, scores, scale) in zip(axes, panels, strict=True):
        for i, arm in enumerate(("baseline", "candidate")):
            s = scores[arm]
            if s["mean"] is None:
                continue
            low = s["low"] if s["low"] is not None else s["mean"]
            high = s["high"] if s["high"] is not None else s["mean"]
            ax.bar(i, scale * s["mean"], yerr=[[scale * (s["mean"] - low)], [scale * (high - s["mean"])]],
                   capsize=4, color=COLOURS[arm])
        ax.set_xticks([0, 1], ["baseline", "candidate"])
        ax.set_title(title, fontsize=10)
    figure.suptitle("Offline scores on held-out episodes (95% bootstrap CI)")
    return figure
