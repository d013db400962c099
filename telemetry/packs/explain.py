"""`esper explain PACK EPISODE`: the decision brief of one episode, for a person or a language model.

A few screens of plain text (or the same content as JSON): what the episode was (its hidden cause,
outcome and trajectory), one line per decision, each intervention with its narrative and reasons,
the red flags and when they were raised, every counterfactual rollout as a table of each action's
value, and hindsight. `--step K` adds one decision in full, with the base features it was taken on.
Everything comes from the pack's two tables (tables.py) through the pack reader; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING, Any

from telemetry.errors import EsperError
from telemetry.seed_status import SeedStage

if TYPE_CHECKING:
    from telemetry.packs.reader import Pack

TRAJECTORY_FEATURES = ("epoch", "val_accuracy", "val_loss", "plateau_epochs", "grad_health", "seed_stage")
DECISION_COLUMNS = ("action", "behaviour_prob", "action_mask", "reward", "narrative", "red_flags", "opportunities",
                    "why_this_action", "why_not_alternatives", "hindsight_accuracy", "hindsight_epochs",
                    "was_good_decision", "counterfactual", "counterfactual_epochs", "best_action")


def register(sub: argparse._SubParsersAction) -> None:
    explain = sub.add_parser("explain", help="the decision brief of one episode: trajectory, interventions, "
                                             "red flags, counterfactuals, hindsight")
    explain.add_argument("pack", metavar="PACK")
    explain.add_argument("episode", metavar="EPISODE", help="an episode id (ep-000003) or its episode_index (3)")
    explain.add_argument("--step", type=int, metavar="K", help="also show decision K of the episode in full")
    explain.add_argument("--format", choices=["text", "json"], default="text")
    explain.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from telemetry.packs.reader import open_pack

    brief = episode_brief(open_pack(args.pack), args.episode, args.step)
    if args.format == "json":
        print(json.dumps(_json_safe(brief), indent=1, default=str, allow_nan=False))
    else:
        print(render_text(brief))
    return 0


# ---- the brief -----------------------------------------------------------------------------------

def resolve_episode(pack: Pack, episode: str) -> str:
    """An episode id of the pack: `episode` itself, or the id whose episode_index it spells."""
    table = pack.episodes(columns=["episode_id", "episode_index"])
    ids = table.column("episode_id").to_pylist()
    if episode in ids:
        return episode
    if episode.lstrip("-").isdigit():
        indices = table.column("episode_index").to_pylist()
        if int(episode) in indices:
            return ids[indices.index(int(episode))]
    example = f"e.g. {ids[0]!r} or its episode_index" if ids else "the pack has no episodes"
    raise EsperError(f"{pack.path}: no episode {episode!r}; expected an episode id or index ({example})")


def episode_brief(pack: Pack, episode: str, step: int | None = None) -> dict[str, Any]:
    episode_id = resolve_episode(pack, episode)
    row = pack.episodes(episodes=[episode_id]).to_pylist()[0]
    names = pack.feature_names("all")
    features = [n for n in TRAJECTORY_FEATURES if n in names]
    base = [n for n in pack.manifest.feature_schema.groups.get("base", []) if n not in features]
    steps = pack.steps(episodes=[episode_id], columns=["step", *features, *base, *DECISION_COLUMNS])
    steps = sorted(steps.to_pylist(), key=lambda s: s["step"])
    if step is not None and not any(s["step"] == step for s in steps):
        raise EsperError(f"--step {step}: episode {episode_id} has steps 0..{len(steps) - 1}")
    return {
        "pack": str(pack.path),
        "episode": {**{k: v for k, v in row.items() if k not in ("key_moments", "seed_outcomes")},
                    "scenario_params": _json(row.get("scenario_params"))},
        "key_moments": row.get("key_moments") or [],
        "seed_outcomes": row.get("seed_outcomes") or [],
        "trajectory": [_line(s, features) for s in steps],
        "interventions": [_intervention(s) for s in steps if s["action"] not in (None, "WAIT")],
        "red_flags": _flag_spans(steps),
        "counterfactuals": [_counterfactual(s) for s in steps if s["counterfactual"]],
        "step": None if step is None else _full(next(s for s in steps if s["step"] == step), base, pack),
    }


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return text


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or Infinity (a diverged episode has them): they become strings, at any depth."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return _finite(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: such values become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _line(s: dict[str, Any], features: list[str]) -> dict[str, Any]:
    line = {"step": s["step"], **{n: _finite(s[n]) for n in features}}
    if "seed_stage" in line and line["seed_stage"] is not None:
        line["seed_stage"] = _stage(line["seed_stage"])
    return {**line, "action": s["action"], "behaviour_prob": _finite(s["behaviour_prob"]),
            "reward": _finite(s["reward"]), "red_flags": s["red_flags"] or []}


def _stage(code: int) -> str:
    try:
        return SeedStage(code).name
    except ValueError:
        return str(code)


def _hindsight(s: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": _finite(s["hindsight_accuracy"]), "epochs": s["hindsight_epochs"],
            "was_good_decision": s["was_good_decision"]}


def _intervention(s: dict[str, Any]) -> dict[str, Any]:
    return {"step": s["step"], "epoch": s.get("epoch"), "action": s["action"],
            "behaviour_prob": _finite(s["behaviour_prob"]), "reward": _finite(s["reward"]),
            "narrative": s["narrative"], "why_this_action": s["why_this_action"],
            "why_not_alternatives": s["why_not_alternatives"] or [], "red_flags": s["red_flags"] or [],
            "opportunities": s["opportunities"] or [], "hindsight": _hindsight(s)}


def _flag_spans(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each red flag with the steps it was raised on and the action taken at the first of them."""
    spans: dict[str, dict[str, Any]] = {}
    for s in steps:
        for flag in s["red_flags"] or []:
            span = spans.setdefault(flag, {"flag": flag, "steps": [], "first_action": s["action"]})
            span["steps"].append(s["step"])
    return list(spans.values())


def _counterfactual(s: dict[str, Any]) -> dict[str, Any]:
    """Each action's value (accuracy minus the parameter cost, where the pack records it; else the
    rollout's accuracy), best first, and its difference to the action taken."""
    rolled = {c["action"]: c for c in s["counterfactual"]}
    values = {a: c["value"] if c.get("value") is not None else c["accuracy"] for a, c in rolled.items()}
    taken = values.get(s["action"])
    rows = [{"action": a, "value": _finite(rolled[a].get("value")), "accuracy": _finite(rolled[a]["accuracy"]),
             "vs_taken": None if v is None or taken is None else _finite(v - taken)}
            for a, v in sorted(values.items(), key=lambda kv: -(kv[1] if kv[1] is not None else -math.inf))]
    return {"step": s["step"], "epoch": s.get("epoch"), "taken": s["action"], "best_action": s["best_action"],
            "epochs": s["counterfactual_epochs"], "values": rows, "hindsight": _hindsight(s)}


def _full(s: dict[str, Any], base: list[str], pack: Pack) -> dict[str, Any]:
    mask = s["action_mask"]
    valid = None if mask is None else [a for a, ok in zip(pack.manifest.actions, mask, strict=False) if ok]
    return {**_intervention(s), "valid_actions": valid,
            "counterfactual": _counterfactual(s) if s["counterfactual"] else None,
            "features": {n: _finite(s[n]) for n in base}}


# ---- text ----------------------------------------------------------------------------------------

def render_text(b: dict[str, Any]) -> str:
    e = b["episode"]
    out = [f"Episode {e['episode_id']} (index {e['episode_index']}, split {e['split']}) of {b['pack']}",
           f"cause: {e['scenario']} {json.dumps(e['scenario_params'], sort_keys=True)}; {e['epochs']} epochs; "
           f"final accuracy {_num(e['final_accuracy'], '%')} (best {_num(e['best_accuracy'], '%')}); "
           f"outcome {e['outcome']}; params added {e['params_added']}; diverged {'yes' if e['diverged'] else 'no'}",
           f"trajectory: {e['trajectory']}"]
    out += [f"seed: {o['blueprint']} in {o['slot']}: {o['outcome']}, germinated epoch {o['germinated_epoch']}, "
            f"ended epoch {o['ended_epoch']}, {_num(o['improvement'], ' points', signed=True)}"
            for o in b["seed_outcomes"]]
    out += [f"  epoch {m['epoch']}: {m['event']}" + (f" ({m['detail']})" if m["detail"] else "")
            for m in b["key_moments"]]
    out += ["", "Decisions", _trajectory_table(b["trajectory"])]
    out += ["", f"Interventions ({len(b['interventions'])})"] + [_intervention_text(i) for i in b["interventions"]]
    out += ["", "Red flags"] + ([f"  {f['flag']}: steps {_ranges(f['steps'])} (first answered with "
                                 f"{f['first_action']})" for f in b["red_flags"]] or ["  none raised"])
    out += ["", f"Counterfactual rollouts ({len(b['counterfactuals'])} steps branched)"]
    out += [_counterfactual_text(c) for c in b["counterfactuals"]] or ["  none"]
    if b["step"] is not None:
        out += ["", f"Step {b['step']['step']} in full", _full_text(b["step"])]
    return "\n".join(out)


def _num(v: Any, unit: str = "", signed: bool = False, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:+.{digits}f}{unit}" if signed else f"{v:.{digits}f}{unit}"


def _trajectory_table(lines: list[dict[str, Any]]) -> str:
    head = f"{'step':>4} {'epoch':>5} {'val acc':>8} {'val loss':>8} {'plat':>4} {'grad':>5} {'seed':<11} " \
           f"{'action':<20} {'mu':>5} {'reward':>7}  flags"
    rows = [head]
    for s in lines:
        rows.append(f"{s['step']:>4} {_num(s.get('epoch'), digits=0):>5} {_num(s.get('val_accuracy'), '%'):>8} "
                    f"{_num(s.get('val_loss'), digits=3):>8} {_num(s.get('plateau_epochs'), digits=0):>4} "
                    f"{_num(s.get('grad_health'), digits=2):>5} {s.get('seed_stage') or '-':<11} "
                    f"{s['action'] or '-':<20} {_num(s['behaviour_prob'], digits=2):>5} "
                    f"{_num(s['reward'], signed=True, digits=2):>7}  {', '.join(s['red_flags']) or '-'}")
    return "\n".join(rows)


def _hindsight_text(h: dict[str, Any]) -> str:
    verdict = {True: "good decision", False: "poor decision", None: "not judged"}[h["was_good_decision"]]
    return f"{_num(h['accuracy'], '%')} after {h['epochs'] if h['epochs'] is not None else '-'} epochs: {verdict}"


def _intervention_text(i: dict[str, Any]) -> str:
    lines = [f"  step {i['step']} (epoch {i['epoch']}): {i['action']} (mu {_num(i['behaviour_prob'], digits=2)}, "
             f"reward {_num(i['reward'], signed=True, digits=2)})",
             f"    narrative: {i['narrative'] or '-'}",
             f"    why: {i['why_this_action'] or '-'}"]
    lines += [f"    not {w['action']}: {w['reason']}" for w in i["why_not_alternatives"]]
    if i["red_flags"]:
        lines.append(f"    red flags: {', '.join(i['red_flags'])}")
    lines.append(f"    hindsight: {_hindsight_text(i['hindsight'])}")
    return "\n".join(lines)


def _ranges(steps: list[int]) -> str:
    parts, start = [], steps[0]
    for prev, cur in zip(steps, [*steps[1:], None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)


def _counterfactual_text(c: dict[str, Any]) -> str:
    epochs = c["epochs"] if c["epochs"] is not None else "-"
    lines = [f"  step {c['step']} (epoch {c['epoch']}): rolled out {epochs} epochs each; taken {c['taken']}, "
             f"best {c['best_action']}; hindsight {_hindsight_text(c['hindsight'])}",
             f"    {'action':<22} {'value':>9} {'accuracy':>9} {'vs taken':>9}"]
    lines += [f"    {v['action'] + (' *' if v['action'] == c['taken'] else ''):<22} {_num(v['value']):>9} "
              f"{_num(v['accuracy'], '%'):>9} {_num(v['vs_taken'], signed=True):>9}" for v in c["values"]]
    return "\n".join(lines)


def _full_text(s: dict[str, Any]) -> str:
    lines = [_intervention_text(s), f"    valid actions: {', '.join(s['valid_actions'] or ['-'])}",
             f"    opportunities: {', '.join(s['opportunities']) or '-'}"]
    if s["counterfactual"]:
        lines.append(_counterfactual_text(s["counterfactual"]))
    lines += [f"    {name:<24} {value:.6g}" if isinstance(value, float) else f"    {name:<24} {value}"
              for name, value in s["features"].items()]
    return "\n".join(lines)
