"""`esper report PACK [--out DIR]`: one self-contained HTML page a person opens in a browser.

What is in the pack at a glance: counts and quick stats; the action distribution per cause;
validation accuracy over epochs per episode with the interventions marked; gradient health over
epochs and layers as a heat map; seed outcomes by blueprint; counterfactual gains per cause. The
figures are PNGs embedded as data URIs, so the page is one file that opens anywhere, offline.
A figure the pack has no data for (no gradient features in a minimal pack, no branched steps) is a
sentence saying so, never an empty plot. The data come from the pack's DuckDB views (reader.py)
and the columns tables.py defines; nothing is written into the pack.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from telemetry.errors import EsperError
from telemetry.packs import report_figures as figures
from telemetry.packs.commit import VERSIONS
from telemetry.packs.manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from telemetry.packs.reader import Pack

REPORT_NAME = "report.html"


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="one self-contained HTML page of a pack's contents, with figures")
    report.add_argument("pack", metavar="PACK")
    report.add_argument("--out", metavar="DIR", help=f"folder to write {REPORT_NAME} into (default: the current "
                                                     "folder); created if absent")
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from telemetry.packs.reader import open_pack

    out = Path(args.out) if args.out else Path.cwd()
    if out.exists() and not out.is_dir():
        raise EsperError(f"--out {out}: exists and is not a folder; expected a folder for {REPORT_NAME}")
    pack = _pack_holding(out)
    if pack is not None:
        raise EsperError(f"--out {out}: inside the pack {pack}; a pack holds only what its commits wrote, so "
                         f"expected a folder outside any pack for {REPORT_NAME}")
    page = render_report(open_pack(args.pack))
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    tmp = path.with_name(f".{REPORT_NAME}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # never a half-written page
    print(path)
    return 0


def _pack_holding(folder: Path) -> Path | None:
    """The pack `folder` lies in (links resolved), or None: the folder itself or any folder above it
    that holds a manifest or version folders."""
    here = folder.resolve()
    for candidate in (here, *here.parents):
        if (candidate / MANIFEST_NAME).exists() or (candidate / VERSIONS).is_dir():
            return candidate
    return None


# ---- the page ------------------------------------------------------------------------------------

def render_report(pack: Pack) -> str:
    con = pack.duckdb()
    names = set(pack.feature_names("all"))
    sections = [("Counts and quick stats", _counts(pack, con)),
                ("Actions per cause", _action_section(pack, con)),
                ("Validation accuracy over epochs", _accuracy_section(con, names)),
                ("Gradient health over epochs and layers", _gradient_section(con, names)),
                ("Seed outcomes by blueprint", _seed_section(con)),
                ("Counterfactual gains per cause", _counterfactual_section(pack, con))]
    m = pack.manifest
    title = f"Pack report: {m.pack_id}"
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{content}</section>" for h, content in sections)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }}
td, th {{ border: 1px solid #ddd; padding: .2em .6em; text-align: left; }} td.n {{ text-align: right; }}
figure {{ margin: 0 0 1.5em; }} figure img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: .9em; }}
p.none {{ color: #777; font-style: italic; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(str(pack.path))}: commit {m.commit} of {m.committed_at:%Y-%m-%d %H:%M} UTC, profile
<code>{html.escape(m.telemetry_config.profile_name)}</code>; report made {when}.</p>
{body}
</body></html>
"""


def _figure(png: bytes, caption: str, name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img id="{name}" alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _none(text: str) -> str:
    return f'<p class="none">{html.escape(text)}</p>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="n">{v:.2f}</td>' if math.isfinite(v) else f'<td class="n">{v}</td>'
        if isinstance(v, int):
            return f'<td class="n">{v}</td>'
        return f"<td>{html.escape('-' if v is None else str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


# ---- sections ------------------------------------------------------------------------------------

def _counts(pack: Pack, con: Any) -> str:
    m, q = pack.manifest, pack.manifest.quick_stats
    splits = []
    for name in m.splits:
        s = m.split_stats.get(name)
        splits.append([name, s.episodes if s else 0, s.steps if s else 0, len(m.files_of("steps", [name]))])
    splits.append(["total", q.episodes, q.steps, len(m.files_of("steps"))])
    facts = [["features", f"{len(m.feature_schema.features)} in groups "
                          + ", ".join(f"{g} ({len(n)})" for g, n in m.feature_schema.groups.items())],
             ["actions taken", ", ".join(f"{a} {n}" for a, n in q.action_distribution.items()) or "none"],
             ["final accuracy", "-" if not q.accuracy_range else
              f"{q.accuracy_range[0]:.1f}% .. {q.accuracy_range[1]:.1f}%"],
             ["seeds", f"{q.seeds}, of which {q.seeds_fossilized} fossilized" if q.seeds else "none"]]
    causes = _rows(con, "SELECT scenario AS cause, count(*) AS episodes, avg(final_accuracy) AS mean_final, "
                        "avg(CASE WHEN diverged THEN 1 ELSE 0 END) AS diverged FROM episodes GROUP BY ALL ORDER BY 1")
    by_cause = [[r["cause"], r["episodes"], r["mean_final"], r["diverged"]] for r in causes]
    return (_table(["split", "episodes", "steps", "steps files"], splits) + _table(["", ""], facts)
            + _table(["cause", "episodes", "mean final accuracy (%)", "share diverged"], by_cause))


def _action_section(pack: Pack, con: Any) -> str:
    rows = _rows(con, "SELECT coalesce(e.scenario, '(no episode row)') AS cause, s.action, count(*) AS n "
                      "FROM steps s LEFT JOIN episodes e USING (episode_id) WHERE s.action IS NOT NULL GROUP BY ALL")
    if not rows:
        return _none("No step records an action.")
    return _figure(figures.action_shares(rows, pack.manifest.actions),
                   "Share of each action among the decisions of each cause (the scenario behind the episode).",
                   "actions-per-cause")


def _accuracy_section(con: Any, names: set[str]) -> str:
    if not {"epoch", "val_accuracy"} <= names:
        return _none("The pack has no epoch or val_accuracy feature.")
    rows = _rows(con, 'SELECT s.episode_id, coalesce(e.scenario, \'?\') AS cause, s."epoch" AS epoch, '
                      "s.val_accuracy, s.action FROM steps s LEFT JOIN episodes e USING (episode_id) "
                      "WHERE s.val_accuracy IS NOT NULL AND isfinite(s.val_accuracy) AND s.\"epoch\" IS NOT NULL "
                      "ORDER BY s.episode_id, s.step")
    if not rows:
        return _none("No step has a finite validation accuracy.")
    return _figure(figures.accuracy_curves(rows),
                   f"Validation accuracy after each epoch, one line per episode (at most "
                   f"{figures.MAX_EPISODES_PER_CAUSE} per cause), marked where the policy intervened.",
                   "accuracy-over-epochs")


def _gradient_section(con: Any, names: set[str]) -> str:
    layers = sorted(n.removeprefix("grad_vanishing_frac_") for n in names if n.startswith("grad_vanishing_frac_")
                    and f"grad_exploding_frac_{n.removeprefix('grad_vanishing_frac_')}" in names)
    if not layers or "epoch" not in names:
        return _none("The pack's profile records no per-layer gradient statistics (vanishing and exploding "
                     "fractions); the diagnostic and research profiles do.")
    from telemetry.probes.gradients import EXPLODING_LAYER_SHARE, VANISHING_LAYER_SHARE

    healthy = ", ".join(f'avg(CASE WHEN "grad_vanishing_frac_{k}" <= {VANISHING_LAYER_SHARE} AND '
                        f'"grad_exploding_frac_{k}" <= {EXPLODING_LAYER_SHARE} THEN 1.0 ELSE 0.0 END) '
                        f'FILTER (WHERE "grad_vanishing_frac_{k}" IS NOT NULL) AS "{k}"' for k in layers)
    rows = _rows(con, f'SELECT "epoch" AS epoch, {healthy} FROM steps GROUP BY 1 ORDER BY 1')
    rows = [r for r in rows if r["epoch"] is not None]
    if not rows:
        return _none("No step records an epoch.")
    values = np.array([[r[k] if r[k] is not None else np.nan for r in rows] for k in layers], dtype=float)
    png = figures.heat_map(values, layers, [r["epoch"] for r in rows], "share of steps with the layer healthy",
                           "RdYlGn", 0.0, 1.0, xlabel="epoch", ylabel="layer")
    return _figure(png, f"For each layer and epoch, the share of steps on which the layer's gradients were "
                        f"healthy: at most {VANISHING_LAYER_SHARE:.0%} of elements vanishing and at most "
                        f"{EXPLODING_LAYER_SHARE:.0%} exploding (the rule behind grad_health).", "gradient-health")


def _seed_section(con: Any) -> str:
    rows = _rows(con, "SELECT o.blueprint AS blueprint, lower(o.outcome) AS outcome, count(*) AS n, "
                      "avg(o.improvement) AS gain FROM (SELECT unnest(seed_outcomes) AS o FROM episodes) "
                      "GROUP BY ALL ORDER BY 1, 2")
    if not rows:
        return _none("No episode germinated a seed.")
    blueprints = sorted({str(r["blueprint"]) for r in rows})
    kinds = sorted({str(r["outcome"]) for r in rows})
    counts = {(str(r["blueprint"]), str(r["outcome"])): r["n"] for r in rows}
    png = figures.stacked_counts(blueprints, kinds, counts, "seeds")
    table = _table(["blueprint", "outcome", "seeds", "mean improvement (points)"],
                   [[r["blueprint"], r["outcome"], r["n"], r["gain"]] for r in rows])
    return _figure(png, "How the seeds of each blueprint ended.", "seed-outcomes") + table


def _counterfactual_section(pack: Pack, con: Any) -> str:
    rows = _rows(con, "SELECT coalesce(e.scenario, '?') AS cause, s.counterfactual FROM steps s "
                      "LEFT JOIN episodes e USING (episode_id) WHERE s.counterfactual IS NOT NULL")
    gains: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        values = {c["action"]: c["accuracy"] for c in r["counterfactual"]
                  if c["accuracy"] is not None and math.isfinite(c["accuracy"])}
        if "WAIT" not in values:
            continue
        for action, accuracy in values.items():
            if action != "WAIT":
                gains.setdefault((r["cause"], action), []).append(accuracy - values["WAIT"])
    if not gains:
        return _none("No step was branched with a WAIT rollout to compare against.")
    causes = sorted({c for c, _ in gains})
    actions = [a for a in pack.manifest.actions if any((c, a) in gains for c in causes)]
    values = np.array([[float(np.mean(gains[(c, a)])) if (c, a) in gains else np.nan for a in actions]
                       for c in causes])
    bound = float(np.nanmax(np.abs(values))) or 1.0
    png = figures.heat_map(values, causes, actions, "mean gain over WAIT (accuracy points)", "RdBu",
                           -bound, bound, annotate=True, xlabel="action rolled out", ylabel="cause")
    n = sum(len(v) for v in gains.values())
    return _figure(png, f"Counterfactual rollouts: each action's final validation accuracy minus WAIT's from the "
                        f"same state, averaged per cause ({len(rows)} branched steps, {n} comparisons).",
                   "counterfactual-gains")
