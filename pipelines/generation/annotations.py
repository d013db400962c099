"""Decision context, episode summaries and hindsight: the design's annotations, from the features.

Every red flag and opportunity is a threshold on named features of the row (REFERENCE.md's
starting thresholds), evaluated only when the profile recorded those features: a minimal pack has no
gradient flags because it has no gradient features, never because gradients looked fine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PLATEAU_LOSS_CHANGE = 0.005  # sustained_plateau: 3+ consecutive epochs with |val_loss change| under this
VANISHING_SHARE = 0.5  # a layer with > 50% of gradient elements under the vanishing threshold
EXPLODING_SHARE = 0.01  # a layer with > 1% of elements over the exploding threshold
POOR_HEALTH = 0.5
OVERFIT_GAP = 0.5  # val_loss - train_loss
CLASS_ACC_STD = 15.0  # points of std across per-class accuracy
SHARPNESS = 0.1  # mean loss increase under perturbation, nats
DEAD_UNITS = 0.5  # share of a layer's channels that are dead
EARLY_EPOCHS = 5
HINDSIGHT_EPOCHS = 3  # k: accuracy k epochs after the decision
HINDSIGHT_MARGIN = 0.5  # points: how much better than waiting a good intervention must be


def _values(row: dict[str, Any], prefix: str) -> list[float]:
    return [float(v) for k, v in row.items() if k.startswith(prefix) and v is not None]


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(float(v))


def _plateau(row: dict[str, Any]) -> bool | None:
    lags = [row.get(f"val_loss_lag{k}") for k in range(4)]
    if not all(_finite(v) for v in lags):
        return None
    return all(abs(lags[k] - lags[k + 1]) < PLATEAU_LOSS_CHANGE for k in range(3))


def _any_over(prefix: str, bound: float) -> Callable[[dict[str, Any]], bool | None]:
    def check(row: dict[str, Any]) -> bool | None:
        values = _values(row, prefix)
        return any(v > bound for v in values) if values else None
    return check


def _over(name: str, bound: float) -> Callable[[dict[str, Any]], bool | None]:
    return lambda row: float(row[name]) > bound if _finite(row.get(name)) else None


def _under(name: str, bound: float) -> Callable[[dict[str, Any]], bool | None]:
    return lambda row: float(row[name]) < bound if _finite(row.get(name)) else None


def _overfitting(row: dict[str, Any]) -> bool | None:
    if not (_finite(row.get("val_loss")) and _finite(row.get("train_loss"))):
        return None
    return float(row["val_loss"]) - float(row["train_loss"]) > OVERFIT_GAP


def _non_finite(row: dict[str, Any]) -> bool | None:
    losses = [row.get("train_loss"), row.get("val_loss")]
    counts = [row.get("loss_nonfinite_batches"), row.get("grad_nonfinite_count")]
    return any(v is not None and not math.isfinite(float(v)) for v in losses) or any(
        v is not None and float(v) > 0 for v in counts)


RED_FLAGS: dict[str, Callable[[dict[str, Any]], bool | None]] = {
    "sustained_plateau": _plateau,
    "vanishing_gradients": _any_over("grad_vanishing_frac_", VANISHING_SHARE),
    "exploding_gradients": _any_over("grad_exploding_frac_", EXPLODING_SHARE),
    "poor_gradient_health": _under("grad_health", POOR_HEALTH),
    "overfitting": _overfitting,
    "severe_class_imbalance": _over("val_acc_class_std", CLASS_ACC_STD),
    "sharp_minimum": _over("sharpness_mean", SHARPNESS),
    "dead_units": _any_over("act_dead_unit_frac_", DEAD_UNITS),
    "non_finite_training": _non_finite,
}


def red_flags(row: dict[str, Any]) -> list[str]:
    return [name for name, check in RED_FLAGS.items() if check(row)]


def opportunities(row: dict[str, Any], flags: list[str]) -> list[str]:
    out = []
    if _finite(row.get("grad_health")) and float(row["grad_health"]) == 1.0:
        out.append("healthy_gradients")
    if _finite(row.get("loss_delta")) and abs(float(row["loss_delta"])) < 0.05 and not flags:
        out.append("stable_training")
    if int(row["epoch"]) < EARLY_EPOCHS:
        out.append("early_stage_flexibility")
    if int(row["available_slots"]) > 0:
        out.append("slot_available")
    return out


def narrative(row: dict[str, Any], flags: list[str]) -> str:
    """One readable line for a person or a language model: state, then causes, then the seed."""
    parts = [f"Epoch {int(row['epoch'])}: val acc {_fmt(row.get('val_accuracy'), '%')}"
             f" ({_fmt(row.get('accuracy_delta'), ' pts', signed=True)})"]
    if int(row["plateau_epochs"]) > 0:
        parts.append(f"accuracy flat for {int(row['plateau_epochs'])} epochs")
    if _finite(row.get("grad_health")):
        parts.append("gradient health good" if float(row["grad_health"]) >= POOR_HEALTH
                     else f"gradient health poor ({float(row['grad_health']):.2f})")
    if flags:
        parts.append("flags: " + ", ".join(flags))
    if row["has_active_seed"]:
        parts.append(f"seed stage {int(row['seed_stage'])} for {int(row['seed_epochs_in_stage'])} epochs "
                     f"({_fmt(row.get('seed_improvement'), ' pts', signed=True)} since germination)")
    if _finite(row.get("seed_path_gain")):
        parts.append(f"seed path {_fmt(row['seed_path_gain'], ' pts', signed=True)} over the host")
    return " | ".join(parts)


def _fmt(v: Any, unit: str, signed: bool = False) -> str:
    if not _finite(v):
        return "n/a"
    return f"{float(v):+.1f}{unit}" if signed else f"{float(v):.1f}{unit}"


@dataclass(frozen=True)
class DecisionContext:
    narrative: str
    red_flags: list[str]
    opportunities: list[str]
    why_this_action: str
    why_not_alternatives: list[dict[str, str]]


def decision_context(row: dict[str, Any], rule: str, why_not: dict[str, str]) -> DecisionContext:
    flags = red_flags(row)
    return DecisionContext(
        narrative=narrative(row, flags),
        red_flags=flags,
        opportunities=opportunities(row, flags),
        why_this_action=rule,
        why_not_alternatives=[{"action": a, "reason": r} for a, r in why_not.items()],
    )


def hindsight(accuracies: list[float | None], step: int, action: str, k: int = HINDSIGHT_EPOCHS,
              counterfactual: dict[str, float] | None = None) -> tuple[float | None, bool | None]:
    """Accuracy k epochs after the decision, and whether the decision was good.

    The rule: with counterfactual values (`counterfactual`: action -> value of its rollout), a
    decision was good when its action's value is within HINDSIGHT_MARGIN points of the best action's.
    Without them, WAIT was good unless accuracy fell over the next k epochs, and an intervention was
    good when accuracy rose by more than HINDSIGHT_MARGIN points over those epochs. Null when the
    episode ends before k epochs pass
    (the episode runner passes k = min(HINDSIGHT_EPOCHS, epochs left), so its rows are never null).
    """
    later = accuracies[step + k] if step + k < len(accuracies) else None
    if counterfactual and action in counterfactual:
        best = max(counterfactual.values())
        return later, counterfactual[action] >= best - HINDSIGHT_MARGIN
    now = accuracies[step]
    if later is None or now is None or not (math.isfinite(later) and math.isfinite(now)):
        return later, None
    if action == "WAIT":
        return later, later >= now
    return later, later - now > HINDSIGHT_MARGIN
