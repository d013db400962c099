"""Synthetic packs for the I/O benchmark, shaped like generated ones and made once, never timed.

The reference host's diagnostic feature schema (155 features, mostly float32), episodes of 24
decision steps whose features follow per-episode trajectories (so byte-stream-split and zstd see
realistic, not constant or white-noise, columns), a seed lifecycle that drives the actions (WAIT
about 80%), masks, mu(a|s), narratives that vary per row, red flags derived from the features,
hindsight, and counterfactuals on about 25% of steps, all from a fixed seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.environment.host import HostCNN
from pipelines.environment.scenarios import SCENARIOS
from telemetry import FeatureSchema, TelemetryConfig, build_feature_schema, load_config, profile_feature_names
from telemetry.packs import (
    DEFAULT_ACTIONS,
    episodes_schema,
    steps_schema,
)

EPISODE_STEPS = 24
ACTIONS = list(DEFAULT_ACTIONS)
WAIT, GERMINATE, ADVANCE, FOSSILIZE, CULL = 0, (1, 2, 3, 4), 5, 6, 7
EPSILON = 0.1  # the behaviour policy's exploration rate
COUNTERFACTUAL_SHARE = 0.25
LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc")
FLAGS = ("sustained_plateau", "vanishing_gradients", "poor_gradient_health", "overfitting",
         "severe_class_imbalance", "sharp_minimum")
OPPORTUNITIES = ("healthy_gradients", "stable_training", "early_stage_flexibility", "slot_available")
STRATA = ("dormant", "training", "training", "blending", "ramp_complete", "dormant")  # by seed stage
STAGE_NAMES = ("dormant", "germinated", "training", "blending", "fossilized", "culled")
WHY_NOT = {WAIT: "the rules call for an intervention now", ADVANCE: "the seed has not earned the next stage yet",
           FOSSILIZE: "the seed has not yet shown a positive gain after a full ramp",
           CULL: "the seed has not shown the loss that justifies culling"}


# ---- synthetic data -----------------------------------------------------------------------------

@dataclass
class Data:
    config: TelemetryConfig
    schema: FeatureSchema
    profiles: dict[str, list[str]]
    steps: pa.Table
    episodes: pa.Table


@dataclass
class Grid:
    """Per-step arrays laid out [episode, step]; the last episode may be shorter (`length`)."""

    rng: np.random.Generator
    episodes: int
    length: np.ndarray  # steps of each episode
    valid: np.ndarray  # [E, 24] bool: a real step, not padding
    t: np.ndarray  # [1, 24] step index

    def normal(self, scale: float | np.ndarray = 1.0, per: str = "step") -> np.ndarray:
        return self.rng.normal(0.0, 1.0, self._shape(per)) * scale

    def uniform(self, low: float, high: float, per: str = "episode") -> np.ndarray:
        return self.rng.uniform(low, high, self._shape(per))

    def lognormal(self, mean: float, sigma: float, per: str = "episode") -> np.ndarray:
        return self.rng.lognormal(mean, sigma, self._shape(per))

    def _shape(self, per: str) -> tuple[int, int]:
        return (self.episodes, EPISODE_STEPS) if per == "step" else (self.episodes, 1)


def make_data(steps: int, seed: int) -> Data:
    """`steps` decision rows in episodes of 24 steps (the last one shorter when they do not divide)."""
    config = load_config("diagnostic")
    model = HostCNN()
    schema = build_feature_schema(config, model, 10)
    episodes = -(-steps // EPISODE_STEPS)
    length = np.full(episodes, EPISODE_STEPS)
    length[-1] = steps - EPISODE_STEPS * (episodes - 1)
    t = np.arange(EPISODE_STEPS)[None, :]
    grid = Grid(np.random.default_rng(seed), episodes, length, t < length[:, None], t)
    features, state = _features(grid, schema)
    columns = {**features, **_decisions(grid, state)}
    columns["episode_id"] = _flat(grid, np.broadcast_to(_episode_ids(episodes)[:, None], grid.valid.shape))
    columns["step"] = _flat(grid, np.broadcast_to(t, grid.valid.shape).astype(np.int32))
    target = steps_schema(schema)
    table = pa.Table.from_arrays([_arrow(columns[f.name], f.type) for f in target], schema=target)
    return Data(config, schema, profile_feature_names(model, 10), table, _episodes_table(grid, state))


def _episode_ids(episodes: int) -> np.ndarray:
    return np.array([f"ep-{i:06d}" for i in range(episodes)], dtype=object)


def _flat(grid: Grid, values: np.ndarray, null: np.ndarray | None = None) -> Any:
    """[E, 24] -> the valid steps in order; with `null`, (values, null mask)."""
    out = values[grid.valid]
    return out if null is None else (out, null[grid.valid])


def _arrow(column: Any, type_: pa.DataType) -> pa.Array:
    if isinstance(column, pa.Array):
        return column
    if isinstance(column, tuple):
        values, null = column
        return pa.array(values.astype(type_.to_pandas_dtype()), type_, mask=null)
    if pa.types.is_string(type_):
        return pa.array(column, type_)
    return pa.array(np.asarray(column).astype(type_.to_pandas_dtype()), type_)


# ---- features --------------------------------------------------------------------------------------

def _features(grid: Grid, schema: FeatureSchema) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every feature column, flattened; and the [E, 24] state the decisions are derived from."""
    state = _training_curves(grid)
    state.update(_seed_lifecycle(grid, state))
    grids = {**_base(grid, state), **_gradients(grid, state), **_per_class(grid, state)}
    state["grad_health"] = grids["grad_health"]
    state["vanishing"] = np.max([grids[f"grad_vanishing_frac_{layer}"] for layer in LAYERS], axis=0)
    state["sharpness"], state["class_std"] = grids["sharpness_mean"], grids["val_acc_class_std"]
    out: dict[str, Any] = {}
    for spec in schema.specs:
        values = grids.get(spec.name)
        if values is None:
            values = _fallback(grid, spec.dtype)
        if isinstance(values, tuple):
            out[spec.name] = _flat(grid, *values)
        else:
            out[spec.name] = _flat(grid, values)
    return out, state


def _training_curves(grid: Grid) -> dict[str, np.ndarray]:
    """Accuracy rises towards a per-episode ceiling; some episodes overfit as epochs pass."""
    start, final, tau = grid.uniform(8, 40), grid.uniform(55, 97), grid.uniform(1.5, 5)
    val_acc = np.clip(final - (final - start) * np.exp(-grid.t / tau) + grid.normal(0.3), 0, 100)
    overfit = grid.uniform(0, 0.05) * (grid.rng.random((grid.episodes, 1)) < 0.4)
    val_loss = 0.04 + 2.25 * (1 - val_acc / 100) ** 1.3 + overfit * grid.t * 0.6 + np.abs(grid.normal(0.01))
    train_loss = np.maximum(0.005, val_loss - overfit * grid.t - np.abs(grid.normal(0.02)))
    train_acc = np.clip(val_acc + 40 * overfit * grid.t + grid.normal(0.8), 0, 100)
    acc_delta = np.diff(val_acc, axis=1, prepend=val_acc[:, :1])
    plateau = np.zeros(val_acc.shape, dtype=np.int64)
    for k in range(1, EPISODE_STEPS):
        plateau[:, k] = np.where(np.abs(acc_delta[:, k]) < 0.5, plateau[:, k - 1] + 1, 0)
    return {"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss, "train_acc": train_acc,
            "acc_delta": acc_delta, "plateau": plateau}


def _seed_lifecycle(grid: Grid, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One seed per episode (or none): germinated once accuracy stalls, trained, blended, then kept or culled."""
    t = grid.t
    stalled = (state["plateau"] >= 3) & (t >= 5)
    germinate = np.where(stalled.any(axis=1), stalled.argmax(axis=1), EPISODE_STEPS + 99)[:, None]
    train, blend = grid.rng.integers(3, 7, (grid.episodes, 1)), grid.rng.integers(2, 5, (grid.episodes, 1))
    gain = grid.normal(2.0, per="episode") + 0.4
    since = t - germinate - 1  # epochs since the seed appeared
    stage = np.select([since < 0, since == 0, since <= train, since <= train + blend],
                      [0, 1, 2, 3], np.where(gain > 0, 4, 5))
    in_stage = np.select([stage == 1, stage == 2, stage == 3], [0, since, since - train],
                         np.maximum(since - train - blend, 0))
    alpha = np.select([stage == 3, stage == 4], [in_stage / blend, 1.0], 0.0)
    progress = np.clip(since / (train + blend), 0, 1) * (since >= 0)
    return {"germinate": germinate, "train": train, "stage": stage, "in_stage": in_stage, "alpha": alpha,
            "seed_gain": gain * progress, "gain": gain, "blueprint": grid.rng.integers(0, 4, (grid.episodes, 1))}


def _lags(name: str, values: np.ndarray, t: np.ndarray, lags: range) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for k in lags:
        shifted = np.roll(values, k, axis=1)
        out[f"{name}_lag{k}"] = (shifted, np.broadcast_to(t < k, values.shape))
    return out


def _base(grid: Grid, s: dict[str, np.ndarray]) -> dict[str, Any]:
    epoch = np.broadcast_to(grid.t + 1, s["val_acc"].shape)
    active = np.isin(s["stage"], (1, 2, 3))
    return {
        "epoch": epoch, "global_step": epoch * 390, "train_loss": s["train_loss"], "val_loss": s["val_loss"],
        "loss_delta": np.diff(s["val_loss"], axis=1, prepend=s["val_loss"][:, :1]),
        "train_accuracy": s["train_acc"], "val_accuracy": s["val_acc"], "accuracy_delta": s["acc_delta"],
        "plateau_epochs": s["plateau"], "best_val_accuracy": np.maximum.accumulate(s["val_acc"], axis=1),
        "best_val_loss": np.minimum.accumulate(s["val_loss"], axis=1),
        **_lags("val_loss", s["val_loss"], grid.t, range(20)),
        **_lags("val_accuracy", s["val_acc"], grid.t, range(20)),
        "has_active_seed": active, "seed_stage": s["stage"], "seed_epochs_in_stage": s["in_stage"],
        "seed_alpha": s["alpha"], "seed_improvement": s["seed_gain"] + grid.normal(0.3) * (s["stage"] > 0),
        "available_slots": np.isin(s["stage"], (0, 5)),
        "seed_slot1_grad_norm": (grid.lognormal(-2.5, 0.8) * grid.lognormal(0, 0.3, per="step"), ~active),
    }


def _gradients(grid: Grid, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-layer gradient statistics: a per-episode level that decays with training, plus step noise."""
    decay = np.exp(-grid.t / grid.uniform(6, 30))
    out: dict[str, np.ndarray] = {}
    for layer in LAYERS:
        norm = grid.lognormal(-1.5, 1.0) * decay * grid.lognormal(0, 0.25, per="step")
        std = norm * grid.uniform(0.002, 0.03)
        median = grid.normal(0.05) * std
        out.update({
            f"grad_norm_{layer}": norm, f"grad_norm_max_{layer}": norm * (1 + grid.lognormal(0, 0.5, per="step")),
            f"grad_std_{layer}": std, f"grad_p1_{layer}": median - std * (2.3 + grid.lognormal(-1, 0.5, per="step")),
            f"grad_p25_{layer}": median - 0.67 * std, f"grad_p50_{layer}": median,
            f"grad_p75_{layer}": median + 0.67 * std,
            f"grad_p99_{layer}": median + std * (2.3 + grid.lognormal(-1, 0.5, per="step")),
            f"grad_vanishing_frac_{layer}": np.clip(grid.rng.beta(0.6, 4, (grid.episodes, 1)) + grid.normal(0.02),
                                                    0, 1),
            f"grad_exploding_frac_{layer}": np.where(grid.rng.random(norm.shape) < 0.02,
                                                     grid.rng.beta(1, 300, norm.shape), 0.0),
        })
    vanishing = np.max([out[f"grad_vanishing_frac_{layer}"] for layer in LAYERS], axis=0)
    exploding = np.max([out[f"grad_exploding_frac_{layer}"] for layer in LAYERS], axis=0)
    rare = grid.rng.random(vanishing.shape)
    out.update({
        "grad_health": np.clip(1.25 - 1.1 * vanishing - 30 * exploding, 0, 1),
        "grad_nonfinite_count": np.where(rare < 0.002, grid.rng.integers(1, 5000, vanishing.shape), 0),
        "loss_nonfinite_batches": np.where(rare < 0.001, 1, 0),
    })
    return out


def _per_class(grid: Grid, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    spread = grid.uniform(1, 14)[:, :, None] * grid.rng.normal(0, 1, (grid.episodes, 1, 10))
    acc = np.clip(s["val_acc"][:, :, None] + spread + grid.rng.normal(0, 1.5, (*s["val_acc"].shape, 10)), 0, 100)
    loss = s["val_loss"][:, :, None] * np.exp(-spread / 30 + grid.rng.normal(0, 0.1, acc.shape))
    sharpness = grid.lognormal(-3.0, 0.9) * grid.lognormal(0, 0.2, per="step")
    return {
        **{f"val_acc_class_{c}": acc[:, :, c] for c in range(10)}, "val_acc_class_std": acc.std(axis=2),
        **{f"val_loss_class_{c}": loss[:, :, c] for c in range(10)},
        "probe_loss": s["val_loss"] * grid.lognormal(0, 0.05, per="step"),
        "sharpness_mean": sharpness, "sharpness_max": sharpness * grid.uniform(1.5, 3.0, per="step"),
    }


def _fallback(grid: Grid, dtype: str) -> np.ndarray:
    """A feature this script has no model for: a smooth per-episode level with step noise."""
    if dtype.startswith("int"):
        return grid.rng.integers(0, 8, (grid.episodes, EPISODE_STEPS))
    return grid.lognormal(-1, 1) * grid.lognormal(0, 0.2, per="step")


# ---- decisions ------------------------------------------------------------------------------------

def _decisions(grid: Grid, s: dict[str, np.ndarray]) -> dict[str, Any]:
    greedy, mask = _greedy(grid, s)
    explore = grid.rng.random(greedy.shape) < EPSILON
    keys = np.where(mask, grid.rng.random((*greedy.shape, len(ACTIONS))), -1.0)
    action = np.where(explore, keys.argmax(axis=2), greedy)
    prob = (1 - EPSILON) * (action == greedy) + EPSILON / mask.sum(axis=2)
    later, horizon = _hindsight(grid, s)
    flat_action, flat_mask = _flat(grid, action), _flat(grid, mask)
    counterfactual, best, good_cf = _counterfactuals(grid.rng, flat_action, flat_mask, _flat(grid, later))
    flat_greedy, flat_stage = _flat(grid, greedy), _flat(grid, s["stage"])
    good = np.where(action == WAIT, later >= s["val_acc"], later - s["val_acc"] > 0.5)
    flags, opportunities = _flag_codes(grid, s)
    reward_acc = np.diff(s["val_acc"], axis=1, append=s["val_acc"][:, -1:])
    reward_cost = np.isin(action, GERMINATE) * 0.05 + (s["stage"] == 3) * 0.01
    narrative, why = _texts(grid, s, action, greedy, flags)
    return {
        "action": pc.take(pa.array(ACTIONS), pa.array(flat_action)),
        "behaviour_prob": _flat(grid, prob), "action_mask": _lists(flat_mask.ravel(), len(ACTIONS)),
        "reward": _flat(grid, reward_acc - reward_cost), "reward_accuracy": _flat(grid, reward_acc),
        "reward_cost": _flat(grid, reward_cost), "narrative": narrative,
        "red_flags": pc.take(_combos(FLAGS), pa.array(_flat(grid, flags))),
        "opportunities": pc.take(_combos(OPPORTUNITIES), pa.array(_flat(grid, opportunities))),
        "why_this_action": why, "why_not_alternatives": _why_not(flat_action, flat_mask, _flat(grid, greedy)),
        "hindsight_accuracy": _flat(grid, later), "hindsight_epochs": _flat(grid, horizon),
        "was_good_decision": np.where(_valid(good_cf), _values(good_cf, False), _flat(grid, good)),
        "counterfactual": counterfactual, "best_action": best,
        "counterfactual_epochs": (np.full(len(flat_action), 10), ~_valid(counterfactual)),  # rollout length
        "best_actions": _singletons(best),
        "counterfactual_stratum": pc.if_else(_valid(counterfactual),
                                             pc.take(pa.array(STRATA), pa.array(flat_stage)), None),
        "expert_action": pc.take(pa.array(ACTIONS), pa.array(flat_greedy)),  # the rules stand in for the expert
    }


def _greedy(grid: Grid, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rules' action at each step and the valid-action mask [E, 24, 8]."""
    stage, t = s["stage"], np.broadcast_to(grid.t, s["stage"].shape)
    end_training = (stage == 2) & (s["in_stage"] == s["train"])
    end_blending = (stage == 3) & (s["alpha"] >= 1)
    greedy = np.select([t == s["germinate"], stage == 1, end_training, end_blending & (s["gain"] > 0), end_blending],
                       [1 + s["blueprint"], ADVANCE, ADVANCE, FOSSILIZE, CULL], WAIT)
    mask = np.zeros((*stage.shape, len(ACTIONS)), dtype=bool)
    mask[..., WAIT] = True
    mask[..., 1:5] = np.isin(stage, (0, 5))[..., None]
    mask[..., ADVANCE] = np.isin(stage, (1, 2))
    mask[..., FOSSILIZE] = stage == 3
    mask[..., CULL] = np.isin(stage, (1, 2, 3))
    return greedy, mask


def _hindsight(grid: Grid, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy h = min(3, steps left) epochs after each decision, as the episode runner records it."""
    horizon = np.minimum(3, grid.length[:, None] - 1 - grid.t).clip(0)
    index = np.minimum(grid.t + horizon, EPISODE_STEPS - 1)
    return np.take_along_axis(s["val_acc"], index, axis=1), horizon


def _counterfactuals(rng: np.random.Generator, action: np.ndarray, mask: np.ndarray,
                     later: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Rollouts of every valid action on about 25% of steps: (list column, best action, was good)."""
    rolled = rng.random(len(action)) < COUNTERFACTUAL_SHARE
    accuracy = np.where(mask, later[:, None] + rng.normal(0, 1.0, mask.shape), -np.inf)
    best = accuracy.argmax(axis=1)
    taken = accuracy[np.arange(len(action)), action]
    entries = mask & rolled[:, None]
    rows, cols = np.nonzero(entries)
    cost = np.isin(cols, GERMINATE) * 0.05
    values = pa.StructArray.from_arrays(
        [pc.take(pa.array(ACTIONS), pa.array(cols)), pa.array(accuracy[rows, cols] - cost, pa.float32()),
         pa.array(accuracy[rows, cols], pa.float32()), pa.array(cost, pa.float32())],
        names=["action", "value", "accuracy", "cost"])
    offsets = np.concatenate([[0], np.cumsum(entries.sum(axis=1))]).astype(np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~rolled))
    best_action = pc.take(pa.array(ACTIONS), pa.array(best, mask=~rolled))
    good = pa.array(taken >= accuracy[np.arange(len(action)), best] - 0.5, mask=~rolled)
    return column, best_action, good


def _singletons(best: pa.Array) -> pa.Array:
    """best_actions: the one best action as a one-element list, null where best_action is."""
    offsets = np.arange(len(best) + 1, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.fill_null(best, ""), mask=pa.array(~_valid(best)))


def _valid(array: pa.Array) -> np.ndarray:
    return array.is_valid().to_numpy(zero_copy_only=False)


def _values(array: pa.Array, null: Any) -> np.ndarray:
    return pc.fill_null(array, null).to_numpy(zero_copy_only=False)


def _lists(flat: np.ndarray, width: int) -> pa.Array:
    offsets = np.arange(0, len(flat) + 1, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _combos(names: tuple[str, ...]) -> pa.Array:
    """Every subset of `names` as a list, indexed by its bit mask."""
    subsets = [[n for i, n in enumerate(names) if code >> i & 1] for code in range(1 << len(names))]
    return pa.array(subsets, pa.list_(pa.string()))


def _flag_codes(grid: Grid, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Red flags and opportunities as bit masks, thresholds as in pipelines.generation.annotations."""
    flags = [s["plateau"] >= 3, s["vanishing"] > 0.5, s["grad_health"] < 0.5,
             s["val_loss"] - s["train_loss"] > 0.5, s["class_std"] > 15, s["sharpness"] > 0.1]
    flag_code = sum(f.astype(np.int64) << i for i, f in enumerate(flags))
    loss_delta = np.abs(np.diff(s["val_loss"], axis=1, prepend=s["val_loss"][:, :1]))
    chances = [s["grad_health"] >= 1.0, (loss_delta < 0.05) & (flag_code == 0),
               np.broadcast_to(grid.t + 1 < 5, flag_code.shape), np.isin(s["stage"], (0, 5))]
    return flag_code, sum(c.astype(np.int64) << i for i, c in enumerate(chances))


def _texts(grid: Grid, s: dict[str, np.ndarray], action: np.ndarray, greedy: np.ndarray,
           flags: np.ndarray) -> tuple[list[str], list[str]]:
    """The narrative and why_this_action of each step, phrased like pipelines.generation.annotations/heuristic."""
    flag_text = [", ".join(f for i, f in enumerate(FLAGS) if code >> i & 1) for code in range(1 << len(FLAGS))]
    epoch = np.broadcast_to(grid.t + 1, action.shape)
    columns = [epoch, s["val_acc"], s["acc_delta"], s["train_loss"], s["val_loss"], s["plateau"], s["grad_health"],
               flags, s["stage"], s["in_stage"], s["seed_gain"], action, greedy]
    narrative, why = [], []
    for e, acc, delta, train, val, plateau, health, flag, stage, in_stage, gain, act, rule in zip(
            *(_flat(grid, c).tolist() for c in columns), strict=True):
        parts = [f"Epoch {e}: val acc {acc:.1f}% ({delta:+.1f} pts), loss {train:.3f} train / {val:.3f} val"]
        if plateau:
            parts.append(f"accuracy flat for {plateau} epochs")
        parts.append(f"gradient health {'good' if health >= 0.5 else 'poor'} ({health:.2f})")
        if flag:
            parts.append("flags: " + flag_text[flag])
        if stage in (1, 2, 3):
            parts.append(f"seed {STAGE_NAMES[stage]} for {in_stage} epochs ({gain:+.1f} pts since germination)")
        narrative.append(" | ".join(parts))
        why.append(_why(e, plateau, stage, in_stage, gain, rule) if act == rule else
                   f"exploration (epsilon={EPSILON}); the rules said {ACTIONS[rule]}")
    return narrative, why


def _why(epoch: int, plateau: int, stage: int, in_stage: int, gain: float, rule: int) -> str:
    if rule in GERMINATE:
        return (f"accuracy plateaued for {plateau} epochs at epoch {epoch} with a free slot: germinate "
                f"({ACTIONS[rule].removeprefix('GERMINATE_').lower()} is next in rotation)")
    if rule == ADVANCE:
        return (f"seed trained {in_stage} epochs and improves accuracy {gain:+.2f} points: blend it in"
                if stage == 2 else "a germinated seed starts training in isolation at once")
    if rule in (FOSSILIZE, CULL):
        verdict = "keep it" if rule == FOSSILIZE else "remove it"
        return f"ramp complete and the seed changed accuracy by {gain:+.2f} points: {verdict}"
    if stage == 2:
        return f"seed training ({in_stage} epochs, {gain:+.2f} points): give it time"
    if stage == 3:
        return f"blending ramp in progress ({in_stage} epochs in)"
    if epoch < 5:
        return f"too early to intervene (epoch {epoch} < 5)"
    return f"still improving (plateau {plateau} < 3 epochs)" if stage == 0 else f"seed is {STAGE_NAMES[stage]}"


def _why_not(action: np.ndarray, mask: np.ndarray, greedy: np.ndarray) -> pa.Array:
    """One (action, reason) per valid action not taken."""
    entries = mask.copy()
    entries[np.arange(len(action)), action] = False
    rows, cols = np.nonzero(entries)
    reasons = [WHY_NOT.get(a, "no sustained plateau with a free slot yet") for a in range(len(ACTIONS))]
    reasons += ["the rules chose it, but exploration picked another action", "another blueprint is next in rotation"]
    rival_blueprint = np.isin(cols, GERMINATE) & np.isin(greedy[rows], GERMINATE)
    index = np.select([cols == greedy[rows], rival_blueprint], [len(ACTIONS), len(ACTIONS) + 1], cols)
    values = pa.StructArray.from_arrays([pc.take(pa.array(ACTIONS), pa.array(cols)),
                                         pc.take(pa.array(reasons), pa.array(index))], names=["action", "reason"])
    offsets = np.concatenate([[0], np.cumsum(entries.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _episodes_table(grid: Grid, s: dict[str, np.ndarray]) -> pa.Table:
    rng, rows = grid.rng, []
    scenario = rng.integers(0, len(SCENARIOS), grid.episodes)
    lr = rng.choice([0.005, 0.05, 0.5], grid.episodes)
    for i in range(grid.episodes):
        n = int(grid.length[i])
        acc = s["val_acc"][i, :n]
        g, train, stage = int(s["germinate"][i, 0]), int(s["train"][i, 0]), int(s["stage"][i, n - 1])
        blueprint = ACTIONS[1 + int(s["blueprint"][i, 0])].removeprefix("GERMINATE_").lower()
        moments = _moments(g, train, stage, blueprint, n)
        seeds = [] if g >= n else [{"slot": "slot1", "blueprint": blueprint, "outcome": STAGE_NAMES[stage],
                                    "germinated_epoch": g + 1, "ended_epoch": n,
                                    "improvement": float(s["seed_gain"][i, n - 1])}]
        rows.append({
            "episode_id": f"ep-{i:06d}", "episode_index": i, "seed": 1000 + i, "scenario": SCENARIOS[scenario[i]],
            "scenario_params": json.dumps({"lr": float(lr[i]), "name": SCENARIOS[scenario[i]], "width": 1.0},
                                          sort_keys=True),
            "epochs": n, "final_accuracy": float(acc[-1]), "best_accuracy": float(acc.max()),
            "outcome": STAGE_NAMES[stage] if g < n else "no_intervention",
            "trajectory": " -> ".join(m["event"] for m in moments) or "steady", "key_moments": moments,
            "seed_outcomes": seeds, "params_added": 0 if g >= n else int(rng.integers(2_000, 60_000)),
            "diverged": bool(rng.random() < 0.02),
        })
    return pa.Table.from_pylist(rows, schema=episodes_schema())


def _moments(germinate: int, train: int, stage: int, blueprint: str, n: int) -> list[dict[str, Any]]:
    if germinate >= n:
        return []
    events = [(germinate, "plateau", None), (germinate + 1, "germinate", blueprint),
              (germinate + 2, "train", blueprint), (germinate + 2 + train, "blend", blueprint)]
    if stage in (4, 5):
        events.append((n, "fossilize" if stage == 4 else "cull", blueprint))
    return [{"epoch": e, "event": ev, "detail": d} for e, ev, d in events if e <= n]
