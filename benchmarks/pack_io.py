"""Pack I/O: what the pack format costs against plain Parquet and the JSON packs it replaced.

The data are synthetic but shaped like generated packs: the reference host's diagnostic feature
schema (155 features, mostly float32), episodes of 24 decision steps whose features follow per-episode
trajectories (so byte-stream-split and zstd see realistic, not constant or white-noise, columns),
a seed lifecycle that drives the actions (WAIT about 80%), masks, mu(a|s), narratives that vary per
row, red flags derived from the features, hindsight, and counterfactuals on about 25% of steps. They
are generated once, up front, from a fixed seed; generation is never timed.

Each pack path is compared with the plainest way to do the same job, so a ratio shows what the pack
machinery adds rather than what Parquet costs:

- PackWriter (create, add_episodes in chunks, close: splits, quick stats, sha256, fsync, manifest)
  against one `pq.write_table` of the same steps table with the same settings (`parquet_options`,
  ROW_GROUP_ROWS row groups). The writer also writes the episodes table; all of it counts against it.
  The bulk file is not fsynced inside its time; its fsync is reported apart.
- The same bulk write with pyarrow's default settings, to show what the tuned settings buy.
- The JSON pack of the design (one nested document, json.dump) on a subset of the rows (JSON at a
  million rows takes minutes and gigabytes), against tuned Parquet written and read on exactly that
  subset. Both start from their native in-memory form (Python objects, an Arrow table), and loading
  ends in the same float32 torch feature matrix. json.dump runs CPython's pure-Python encoder, so
  json.dumps (the C encoder) is timed too: JSON's best case, so the comparison cannot flatter Parquet.
- `open_pack(...).tensors(features="all")` against `pq.read_table` of the manifest's steps files with
  the columns tensors() needs (features, action, action_mask): the cost of building the matrix,
  labels and masks over reading the bytes. Files are in the page cache (a warm-up read comes first).
- DuckDB: each library query on the pack's views, connection and views made beforehand, result
  fetched in full, after one warm-up run (its time is reported as `first_ms`).

Repetitions of compared variants are interleaved in a rotating order, so drift in machine load hits
all of them alike; a ratio is the median over repetitions of the ratio within one repetition.

    python benchmarks/pack_io.py             # 1,000,000 steps, JSON on 50,000 of them, 3 repetitions
    python benchmarks/pack_io.py --quick     # 100,000 steps, JSON on 10,000: under a minute on 2 CPU cores
    python benchmarks/pack_io.py --json      # one JSON object
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipelines.host import HostCNN
from pipelines.scenarios import SCENARIOS
from telemetry.config import TelemetryConfig, load_config
from telemetry.feature_schema import FeatureSchema, build_feature_schema
from telemetry.pack_reader import open_pack
from telemetry.pack_schema import DEFAULT_ACTIONS, episodes_schema, profile_feature_names, steps_schema
from telemetry.pack_writer import ROW_GROUP_ROWS, PackWriter, parquet_options

EPISODE_STEPS = 24
TARGETS = {"write_ratio": 1.1, "tensors_ratio": 1.5, "action_distribution_ms": 50.0, "query_ms": 1000.0}
ACTIONS = list(DEFAULT_ACTIONS)
WAIT, GERMINATE, ADVANCE, FOSSILIZE, CULL = 0, (1, 2, 3, 4), 5, 6, 7
EPSILON = 0.1  # the behaviour policy's exploration rate
COUNTERFACTUAL_SHARE = 0.25
LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc")
FLAGS = ("sustained_plateau", "vanishing_gradients", "poor_gradient_health", "overfitting",
         "severe_class_imbalance", "sharp_minimum")
OPPORTUNITIES = ("healthy_gradients", "stable_training", "early_stage_flexibility", "slot_available")
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
    values = pa.StructArray.from_arrays(
        [pc.take(pa.array(ACTIONS), pa.array(cols)), pa.array(accuracy[rows, cols], pa.float32())],
        names=["action", "accuracy"])
    offsets = np.concatenate([[0], np.cumsum(entries.sum(axis=1))]).astype(np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~rolled))
    best_action = pc.take(pa.array(ACTIONS), pa.array(best, mask=~rolled))
    good = pa.array(taken >= accuracy[np.arange(len(action)), best] - 0.5, mask=~rolled)
    return column, best_action, good


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
    """Red flags and opportunities as bit masks, thresholds as in pipelines.annotations."""
    flags = [s["plateau"] >= 3, s["vanishing"] > 0.5, s["grad_health"] < 0.5,
             s["val_loss"] - s["train_loss"] > 0.5, s["class_std"] > 15, s["sharpness"] > 0.1]
    flag_code = sum(f.astype(np.int64) << i for i, f in enumerate(flags))
    loss_delta = np.abs(np.diff(s["val_loss"], axis=1, prepend=s["val_loss"][:, :1]))
    chances = [s["grad_health"] >= 1.0, (loss_delta < 0.05) & (flag_code == 0),
               np.broadcast_to(grid.t + 1 < 5, flag_code.shape), np.isin(s["stage"], (0, 5))]
    return flag_code, sum(c.astype(np.int64) << i for i, c in enumerate(chances))


def _texts(grid: Grid, s: dict[str, np.ndarray], action: np.ndarray, greedy: np.ndarray,
           flags: np.ndarray) -> tuple[list[str], list[str]]:
    """The narrative and why_this_action of each step, phrased like pipelines.annotations/heuristic."""
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


# ---- timing helpers -------------------------------------------------------------------------------

def _interleaved(variants: dict[str, Callable[[int], float]], reps: int) -> dict[str, list[float]]:
    """Each variant returns its own timed seconds (setup excluded); the order rotates per repetition."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(variants[name](rep))
    return times


def _ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def _clock(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---- 1 and 2: writing ----------------------------------------------------------------------------

def write_pack(data: Data, path: Path, chunk_episodes: int) -> None:
    """The streaming path of a bulk conversion: Arrow chunks of whole episodes into a PackWriter."""
    writer = PackWriter.create(path, data.config, data.schema, profiles=data.profiles)
    for start in range(0, data.episodes.num_rows, chunk_episodes):
        episodes = data.episodes.slice(start, chunk_episodes)
        first, rows = start * EPISODE_STEPS, episodes.num_rows * EPISODE_STEPS
        writer.add_episodes(episodes, data.steps.slice(first, rows))
    writer.close()


def bench_write(data: Data, tmp: Path, reps: int, chunk_episodes: int) -> tuple[dict[str, Any], Path]:
    """Writer vs bulk tuned vs bulk default; returns the results and one kept pack for the readers."""
    table, options = data.steps, parquet_options(data.steps.schema)
    kept = tmp / "pack"
    sizes: dict[str, int] = {}
    fsync: list[float] = []

    def writer(rep: int) -> float:
        path = kept if rep == 0 else tmp / "pack-again"
        seconds = _clock(lambda: write_pack(data, path, chunk_episodes))
        manifest = open_pack(path, verify=False).manifest
        sizes["writer_steps"] = sum(f.bytes for f in manifest.files_of("steps"))
        sizes["writer_episodes"] = sum(f.bytes for f in manifest.files_of("episodes"))
        sizes["writer_files"] = len(manifest.files)
        if path != kept:
            _remove(path)
        return seconds

    def bulk(label: str, **kwargs: Any) -> Callable[[int], float]:
        def run(rep: int) -> float:
            path = tmp / f"{label}.parquet"
            seconds = _clock(lambda: pq.write_table(table, path, **kwargs))
            sizes[label] = _size(path)
            if label == "tuned":
                fsync.append(_clock(lambda: _fsync(path)))
            _remove(path)
            return seconds
        return run

    _warm_up_writes(data, tmp, options)
    times = _interleaved({"writer": writer, "tuned": bulk("tuned", row_group_size=ROW_GROUP_ROWS, **options),
                          "default": bulk("default")}, reps)
    return {
        "writer_s": statistics.median(times["writer"]), "bulk_s": statistics.median(times["tuned"]),
        "bulk_fsync_s": statistics.median(fsync), "ratio": _ratio(times, "writer", "tuned"),
        "target": TARGETS["write_ratio"], "writer_steps_bytes": sizes["writer_steps"],
        "writer_episodes_bytes": sizes["writer_episodes"], "writer_files": sizes["writer_files"],
        "bulk_bytes": sizes["tuned"], "writer_size_ratio": sizes["writer_steps"] / sizes["tuned"],
        "default_s": statistics.median(times["default"]), "default_bytes": sizes["default"],
        "default_time_ratio": _ratio(times, "default", "tuned"),
        "default_size_ratio": sizes["default"] / sizes["tuned"],
    }, kept


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _warm_up_writes(data: Data, tmp: Path, options: dict[str, Any]) -> None:
    """Imports, thread pools and codecs initialised before anything is timed."""
    small = Data(data.config, data.schema, data.profiles, data.steps.slice(0, 10 * EPISODE_STEPS),
                 data.episodes.slice(0, 10))
    write_pack(small, tmp / "warm-pack", 10)
    pq.write_table(small.steps, tmp / "warm.parquet", **options)
    pq.write_table(small.steps, tmp / "warm-default.parquet")
    for path in ("warm-pack", "warm.parquet", "warm-default.parquet"):
        _remove(tmp / path)


# ---- 3: the JSON pack -------------------------------------------------------------------------------

DECISION_CONTEXT = ("narrative", "red_flags", "opportunities", "why_this_action", "why_not_alternatives")
HINDSIGHT = ("hindsight_accuracy", "hindsight_epochs", "was_good_decision", "counterfactual", "best_action")
STEP_KEYS = ("action", "behaviour_prob", "action_mask", "reward", "reward_accuracy", "reward_cost")


def json_document(steps: pa.Table, episodes: pa.Table, names: list[str]) -> dict[str, Any]:
    """The design's JSON pack: episodes, each with its steps' features, decision and context nested."""
    by_episode: dict[str, list[dict[str, Any]]] = {}
    for row in steps.to_pylist():
        by_episode.setdefault(row["episode_id"], []).append({
            "step": row["step"],
            "features": {n: row[n] for n in names},
            **{k: row[k] for k in STEP_KEYS},
            "decision_context": {k: row[k] for k in DECISION_CONTEXT},
            "hindsight": {k.removeprefix("hindsight_"): row[k] for k in HINDSIGHT},
        })
    return {"episodes": [{**ep, "steps": by_episode[ep["episode_id"]]} for ep in episodes.to_pylist()
                         if ep["episode_id"] in by_episode]}


def json_matrix(path: Path, names: list[str]) -> torch.Tensor:
    """json.load, then the float32 feature matrix (nulls to 0.0, as Pack.tensors does)."""
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    get = operator.itemgetter(*names)
    matrix = np.array([get(s["features"]) for ep in document["episodes"] for s in ep["steps"]], dtype=np.float32)
    matrix[np.isnan(matrix)] = 0.0  # None became NaN; the generated data hold no NaN of their own
    return torch.from_numpy(matrix)


def parquet_matrix(path: Path, names: list[str]) -> torch.Tensor:
    """pq.read_table of the whole file (as json.load reads everything), then the same matrix."""
    table = pq.read_table(path)
    matrix = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        matrix[:, j] = pc.fill_null(table.column(name), 0).to_numpy()
    return torch.from_numpy(matrix)


def bench_json(data: Data, tmp: Path, rows: int, reps: int) -> dict[str, Any]:
    """json.dump (the design's writer, CPython's pure-Python encoder) and json.dumps (the C encoder,
    JSON's best case) against tuned Parquet, on the first `rows` rows rounded down to whole episodes."""
    episodes = max(1, min(rows, data.steps.num_rows) // EPISODE_STEPS)
    subset, subset_episodes = data.steps.slice(0, episodes * EPISODE_STEPS), data.episodes.slice(0, episodes)
    names = data.schema.names
    document = json_document(subset, subset_episodes, names)
    json_path, dumps_path, parquet_path = tmp / "pack.json", tmp / "pack-dumps.json", tmp / "subset.parquet"
    options = {"row_group_size": ROW_GROUP_ROWS, **parquet_options(subset.schema)}

    def dump() -> None:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f)

    def dumps() -> None:
        with open(dumps_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(document))

    writes = _interleaved({"json": lambda _: _clock(dump), "json_dumps": lambda _: _clock(dumps),
                           "parquet": lambda _: _clock(lambda: pq.write_table(subset, parquet_path, **options))},
                          reps)
    assert _size(dumps_path) == _size(json_path), "json.dump and json.dumps wrote different documents"
    expected = json_matrix(json_path, names)
    assert torch.equal(expected, parquet_matrix(parquet_path, names)), "JSON and Parquet matrices differ"
    loads = _interleaved({"json": lambda _: _clock(lambda: json_matrix(json_path, names)),
                          "parquet": lambda _: _clock(lambda: parquet_matrix(parquet_path, names))}, reps)
    result = {
        "rows": subset.num_rows, "episodes": episodes,
        "json_write_s": statistics.median(writes["json"]),
        "json_dumps_write_s": statistics.median(writes["json_dumps"]),
        "parquet_write_s": statistics.median(writes["parquet"]),
        "write_ratio": _ratio(writes, "json", "parquet"), "dumps_write_ratio": _ratio(writes, "json_dumps", "parquet"),
        "json_bytes": _size(json_path), "parquet_bytes": _size(parquet_path),
        "json_load_s": statistics.median(loads["json"]), "parquet_load_s": statistics.median(loads["parquet"]),
        "load_ratio": _ratio(loads, "json", "parquet"),
    }
    result["size_ratio"] = result["json_bytes"] / result["parquet_bytes"]
    for path in (json_path, dumps_path, parquet_path):
        _remove(path)
    return result


# ---- 4: tensors ------------------------------------------------------------------------------------

def bench_tensors(path: Path, reps: int) -> dict[str, Any]:
    pack = open_pack(path, verify=False)
    names = pack.feature_names("all")
    files = [str(f) for f in pack.files("steps")]
    columns = [*names, "action", "action_mask"]
    shape = tuple(pack.tensors().features.shape)  # warm-up: page cache, imports, thread pools
    raw = pq.read_table(files, columns=columns)
    assert raw.num_rows == shape[0], f"read_table read {raw.num_rows} rows, tensors() {shape[0]}"
    del raw
    times = _interleaved({
        "read_table": lambda _: _clock(lambda: pq.read_table(files, columns=columns)),
        "tensors": lambda _: _clock(lambda: open_pack(path, verify=False).tensors(features="all")),
        "tensors_verified": lambda _: _clock(lambda: open_pack(path, verify=True).tensors(features="all")),
    }, reps)
    return {
        "shape": list(shape), "files": len(files),
        "read_table_s": statistics.median(times["read_table"]), "tensors_s": statistics.median(times["tensors"]),
        "tensors_verified_s": statistics.median(times["tensors_verified"]),
        "ratio": _ratio(times, "tensors", "read_table"),
        "verified_ratio": _ratio(times, "tensors_verified", "read_table"), "target": TARGETS["tensors_ratio"],
    }


# ---- 5: DuckDB -------------------------------------------------------------------------------------

def bench_duckdb(path: Path, reps: int) -> dict[str, Any]:
    from telemetry.queries import library  # packaged from queries/ (see pyproject.toml)

    queries = library()
    con = open_pack(path).duckdb()
    threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    try:
        first = {name: _clock(lambda sql=sql: con.execute(sql).fetchall()) for name, sql in queries.items()}
        times: dict[str, list[float]] = {name: [] for name in queries}
        for _ in range(reps):
            for name, sql in queries.items():
                times[name].append(_clock(lambda sql=sql: con.execute(sql).fetchall()))
    finally:
        con.close()
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    return {
        "action_distribution_ms": ms["action_distribution"],
        "action_distribution_target_ms": TARGETS["action_distribution_ms"],
        "queries_ms": ms, "queries_first_ms": {n: 1000 * s for n, s in first.items()},
        "query_target_ms": TARGETS["query_ms"], "threads": threads,
    }


# ---- the run and its report -----------------------------------------------------------------------

def machine() -> dict[str, Any]:
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": cpus, "memory_gib": memory, "python": platform.python_version(), "pyarrow": pa.__version__,
            "duckdb": duckdb.__version__, "torch": torch.__version__, "numpy": np.__version__}


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    start = time.perf_counter()
    data = make_data(args.steps, args.seed)
    generated = time.perf_counter() - start
    actions = data.steps.column("action").value_counts().to_pylist()
    wait = next(c["counts"] for c in actions if c["values"] == "WAIT") / data.steps.num_rows
    result: dict[str, Any] = {
        "device": f"cpu ({info['processor']}, {info['cpus']} cores)", "machine": info,
        "settings": {"steps": data.steps.num_rows, "episodes": data.episodes.num_rows,
                     "features": len(data.schema.names), "json_rows": args.json_rows, "reps": args.reps,
                     "chunk_episodes": args.chunk_episodes, "seed": args.seed, "quick": args.quick,
                     "row_group_rows": ROW_GROUP_ROWS, "wait_share": round(wait, 3),
                     "generation_s": round(generated, 1)},
    }
    with tempfile.TemporaryDirectory(prefix="pack-io-", dir=args.dir) as tmp:
        result["write"], pack = bench_write(data, Path(tmp), args.reps, args.chunk_episodes)
        result["json"] = bench_json(data, Path(tmp), args.json_rows, args.reps)
        del data
        result["tensors"] = bench_tensors(pack, args.reps)
        result["duckdb"] = bench_duckdb(pack, args.reps)
    result["targets_met"] = {
        "write_ratio": result["write"]["ratio"] <= TARGETS["write_ratio"],
        "tensors_ratio": result["tensors"]["ratio"] <= TARGETS["tensors_ratio"],
        "action_distribution_ms": result["duckdb"]["action_distribution_ms"] <= TARGETS["action_distribution_ms"],
        "every_query_ms": max(result["duckdb"]["queries_ms"].values()) <= TARGETS["query_ms"],
    }
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _row(measure: str, measured: str, target: str = "-", mark: str = "") -> str:
    return f"{measure:<52} {measured:>12} {target:>10}  {mark}".rstrip()


def report(r: dict[str, Any]) -> None:
    s, w, j, t, d = r["settings"], r["write"], r["json"], r["tensors"], r["duckdb"]
    print(f"device: {r['device']}, {r['machine']['memory_gib']} GiB; pyarrow {r['machine']['pyarrow']}, "
          f"duckdb {r['machine']['duckdb']}")
    print(f"data: {s['steps']:,} steps in {s['episodes']:,} episodes of {EPISODE_STEPS}, {s['features']} features "
          f"(WAIT {s['wait_share']:.0%}); medians of {s['reps']} repetitions")
    print(f"\n{'measure':<52} {'measured':>12} {'target':>10}")
    print(_row("write: PackWriter / bulk write_table (same settings)", f"{w['ratio']:.3f}x",
                     f"<= {w['target']}", _mark(w["ratio"] <= w["target"])))
    print(f"  PackWriter {w['writer_s']:.2f} s, {_mb(w['writer_steps_bytes'])} steps + "
          f"{_mb(w['writer_episodes_bytes'])} episodes in {w['writer_files']} files "
          f"(steps {w['writer_size_ratio']:.3f}x the bulk file)")
    print(f"  bulk write_table {w['bulk_s']:.2f} s, {_mb(w['bulk_bytes'])} (+ fsync {w['bulk_fsync_s']:.2f} s, "
          "not in its time)")
    print(_row("write: pyarrow defaults / tuned settings, time", f"{w['default_time_ratio']:.3f}x"))
    print(_row("write: pyarrow defaults / tuned settings, size", f"{w['default_size_ratio']:.3f}x"))
    print(f"  defaults {w['default_s']:.2f} s, {_mb(w['default_bytes'])}")
    print(f"JSON pack, measured on the first {j['rows']:,} rows only ({j['episodes']:,} episodes), "
          "against tuned Parquet of the same rows:")
    print(_row("  JSON (json.dump) / Parquet write time", f"{j['write_ratio']:.1f}x"))
    print(_row("  JSON (json.dumps, C encoder) / Parquet write time", f"{j['dumps_write_ratio']:.1f}x"))
    print(_row("  JSON / Parquet size", f"{j['size_ratio']:.1f}x"))
    print(_row("  JSON / Parquet load into a float32 tensor", f"{j['load_ratio']:.1f}x"))
    print(f"  JSON {_mb(j['json_bytes'])}, write {j['json_write_s']:.2f} s (dumps {j['json_dumps_write_s']:.2f} s), "
          f"load {j['json_load_s']:.2f} s; "
          f"Parquet {_mb(j['parquet_bytes'])}, write {j['parquet_write_s']:.3f} s, load {j['parquet_load_s']:.3f} s")
    print(_row('tensors(features="all") / read_table, verify=False', f"{t['ratio']:.3f}x",
                     f"<= {t['target']}", _mark(t["ratio"] <= t["target"])))
    print(_row('tensors(features="all") / read_table, verify=True', f"{t['verified_ratio']:.3f}x",
                     f"<= {t['target']}", _mark(t["verified_ratio"] <= t["target"])))
    print(f"  read_table {t['read_table_s']:.3f} s, tensors {t['tensors_s']:.3f} s, "
          f"verified {t['tensors_verified_s']:.3f} s -> {t['shape'][0]:,} x {t['shape'][1]} from {t['files']} files")
    print(_row("duckdb action_distribution", f"{d['action_distribution_ms']:.1f} ms",
                     f"<= {d['action_distribution_target_ms']:.0f} ms",
                     _mark(d["action_distribution_ms"] <= d["action_distribution_target_ms"])))
    for name, ms in d["queries_ms"].items():
        print(_row(f"  duckdb {name}", f"{ms:.1f} ms", f"<= {d['query_target_ms']:.0f} ms",
                         _mark(ms <= d["query_target_ms"]) + f" (first run {d['queries_first_ms'][name]:.0f} ms)"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100,000 steps, JSON on 10,000, 2 repetitions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--steps", type=int, help="decision steps (default 1,000,000)")
    p.add_argument("--json-rows", type=int, help="rows of the JSON comparison (default 50,000)")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 3)")
    p.add_argument("--chunk-episodes", type=int, default=1000, help="episodes per add_episodes call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="where the temporary files go (default: the system's temporary folder)")
    args = p.parse_args(argv)
    preset = {"steps": 100_000, "json_rows": 10_000, "reps": 2} if args.quick else \
        {"steps": 1_000_000, "json_rows": 50_000, "reps": 3}
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < EPISODE_STEPS or args.json_rows < EPISODE_STEPS or args.reps < 1:
        p.error(f"--steps and --json-rows must be at least {EPISODE_STEPS}, --reps at least 1")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
