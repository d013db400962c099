"""Quick stats: summaries kept while a pack is written, never by rescanning it.

Every statistic is mergeable, so stats of row chunks, of commits and of parallel writers combine
exactly: counts add, minima and maxima fold, and the mean and the sum of squared deviations (M2)
combine with Chan et al.'s parallel formula. Moments cover finite values only: NaN and +-Inf are
real telemetry (a diverged run) and are counted, but one of them must not turn a column's mean
and std, which `tensors(normalize=...)` divides by, into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, computed_field, model_validator

SEED_SUCCESS = "fossilized"

_STATS = ConfigDict(extra="ignore")


def _merge_opt(a: float | None, b: float | None, pick) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


class ColumnStats(BaseModel):
    """One numeric column: `count` non-null values, of which `nonfinite_count` are NaN or +-Inf."""

    model_config = _STATS

    count: int = 0
    null_count: int = 0
    nonfinite_count: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    m2: float = 0.0

    @model_validator(mode="after")
    def _whole(self) -> ColumnStats:
        """A hand-edited manifest could drop a moment that merging (every commit, validate) needs."""
        if not 0 <= self.nonfinite_count <= self.count or self.null_count < 0:
            raise ValueError(f"counts {self.count}, {self.null_count} null, {self.nonfinite_count} non-finite do "
                             "not add up")
        if self.finite_count and None in (self.min, self.max, self.mean):
            raise ValueError(f"{self.finite_count} finite values but no min, max or mean")
        return self

    @property
    def finite_count(self) -> int:
        return self.count - self.nonfinite_count

    @computed_field  # type: ignore[prop-decorator]
    @property
    def std(self) -> float | None:
        """Population standard deviation of the finite values (None when there are none)."""
        n = self.finite_count
        return math.sqrt(max(self.m2, 0.0) / n) if n else None

    def merge(self, other: ColumnStats) -> ColumnStats:
        na, nb = self.finite_count, other.finite_count
        n = na + nb
        if na == 0 or nb == 0:
            mean, m2 = (self.mean, self.m2) if nb == 0 else (other.mean, other.m2)
        else:
            delta = other.mean - self.mean
            mean = self.mean + delta * nb / n
            m2 = self.m2 + other.m2 + delta * delta * na * nb / n
        return ColumnStats(
            count=self.count + other.count,
            null_count=self.null_count + other.null_count,
            nonfinite_count=self.nonfinite_count + other.nonfinite_count,
            min=_merge_opt(self.min, other.min, min),
            max=_merge_opt(self.max, other.max, max),
            mean=mean,
            m2=m2,
        )

    @classmethod
    def of(cls, column: pa.Array | pa.ChunkedArray) -> ColumnStats:
        nulls = column.null_count
        values = pc.drop_null(column) if nulls else column
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        x = values.to_numpy(zero_copy_only=False)
        count = len(x)
        with np.errstate(invalid="ignore", over="ignore"):  # Inf - Inf: a NaN that says to look closer
            total = float(np.add.reduce(x, dtype=np.float64))
        if not math.isfinite(total) and x.dtype.kind == "f":  # finite float32 values never overflow this sum
            x = x[np.isfinite(x)]
            total = float(np.add.reduce(x, dtype=np.float64))
        nonfinite = count - len(x)
        if len(x) == 0:
            return cls(count=count, null_count=nulls, nonfinite_count=nonfinite)
        mean, m2 = _moments(x, total / len(x))
        return cls(count=count, null_count=nulls, nonfinite_count=nonfinite,
                   min=float(x.min()), max=float(x.max()), mean=mean, m2=m2)


def _moments(x: np.ndarray, mean: float) -> tuple[float, float]:
    """Mean and M2 accumulated in float64 without a float64 copy of float32 data.

    Deviations are taken from the mean rounded to the data's dtype, then corrected exactly
    (sum (x-c)^2 = M2 + n (mean-c)^2), which keeps float32 columns about 3x cheaper to summarise.
    """
    n = len(x)
    m2 = math.inf
    if x.dtype == np.float32:
        centre = np.float32(mean)
        with np.errstate(over="ignore", invalid="ignore"):
            dev = x - centre
            m2 = float(np.add.reduce(dev * dev, dtype=np.float64)) - n * (mean - float(centre)) ** 2
    if not math.isfinite(m2):  # not float32, or deviations beyond float32's range (exploding gradients)
        dev = x.astype(np.float64) - mean
        m2 = float(np.add.reduce(dev * dev))
    return mean, max(m2, 0.0)


class QuickStats(BaseModel):
    """Counts, action distribution, accuracy range, seed success and per-column stats of some rows."""

    model_config = _STATS

    episodes: int = 0
    steps: int = 0
    action_distribution: dict[str, int] = {}
    final_accuracy_min: float | None = None
    final_accuracy_max: float | None = None
    seeds: int = 0
    seeds_fossilized: int = 0
    columns: dict[str, ColumnStats] = {}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy_range(self) -> list[float] | None:
        """[lowest, highest] final accuracy over the episodes."""
        if self.final_accuracy_min is None or self.final_accuracy_max is None:
            return None
        return [self.final_accuracy_min, self.final_accuracy_max]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def seed_success_rate(self) -> float | None:
        """Fraction of the episodes' seeds whose outcome was fossilized."""
        return self.seeds_fossilized / self.seeds if self.seeds else None

    def merge(self, other: QuickStats) -> QuickStats:
        actions = dict(self.action_distribution)
        for action, n in other.action_distribution.items():
            actions[action] = actions.get(action, 0) + n
        columns = dict(self.columns)
        for name, stats in other.columns.items():
            columns[name] = columns[name].merge(stats) if name in columns else stats
        return QuickStats(
            episodes=self.episodes + other.episodes,
            steps=self.steps + other.steps,
            action_distribution=dict(sorted(actions.items())),
            final_accuracy_min=_merge_opt(self.final_accuracy_min, other.final_accuracy_min, min),
            final_accuracy_max=_merge_opt(self.final_accuracy_max, other.final_accuracy_max, max),
            seeds=self.seeds + other.seeds,
            seeds_fossilized=self.seeds_fossilized + other.seeds_fossilized,
            columns=columns,
        )

    @classmethod
    def of_steps(cls, steps: pa.Table, columns: Sequence[str]) -> QuickStats:
        counts = pc.value_counts(steps.column("action").drop_null()) if steps.num_rows else []
        actions = {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()} if counts else {}
        return cls(
            steps=steps.num_rows,
            action_distribution=dict(sorted(actions.items())),
            columns={name: ColumnStats.of(steps.column(name)) for name in columns},
        )

    @classmethod
    def of_episodes(cls, episodes: pa.Table) -> QuickStats:
        acc = ColumnStats.of(episodes.column("final_accuracy"))
        outcomes = pc.list_flatten(episodes.column("seed_outcomes"))
        fossilized = 0
        if len(outcomes):
            kinds = pc.utf8_lower(pc.struct_field(outcomes, "outcome"))
            fossilized = int(pc.sum(pc.equal(kinds, SEED_SUCCESS)).as_py() or 0)
        return cls(
            episodes=episodes.num_rows,
            final_accuracy_min=acc.min,
            final_accuracy_max=acc.max,
            seeds=len(outcomes),
            seeds_fossilized=fossilized,
        )


def merge_all(stats: Iterable[QuickStats]) -> QuickStats:
    total = QuickStats()
    for s in stats:
        total = total.merge(s)
    return total


def numeric_columns(schema: pa.Schema, exclude: Iterable[str] = ("step",)) -> list[str]:
    """Columns that get ColumnStats: every integer or floating column but the identity ones."""
    skip = set(exclude)
    return [f.name for f in schema
            if f.name not in skip and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
