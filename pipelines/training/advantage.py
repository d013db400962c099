"""Advantage targets: what each action is worth over WAIT, from the values a pack's rollouts stored.

At a branched step the pack holds every valid action's counterfactual value Q(s, a) (steps column
`counterfactual`: action, value, accuracy, cost). Regressing A(s, a) = Q(s, a) - Q(s, WAIT) on every
such action uses all of them, where the oracle label keeps only the argmax: actions that tie with
the best cost nothing (their targets are equal), and the loss is largest where choosing wrongly
loses most. WAIT's advantage is 0 by definition; a step without a branch, or without a value for
WAIT to compare with, contributes nothing. Values are read as float64 before subtracting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from telemetry import EsperError

WAIT = "WAIT"


def advantage_targets(counterfactual: pa.Array | pa.ChunkedArray, actions: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(advantages float64 [rows, actions], has bool [rows, actions]) from a `counterfactual` column.

    `has[i, a]` says row i stores a value for action a and one for WAIT; elsewhere the advantage is 0
    and must not be trained on. Raises EsperError for a value that names an unknown action, repeats
    one, or is missing or not finite (a target no network can meet)."""
    column = counterfactual.combine_chunks() if isinstance(counterfactual, pa.ChunkedArray) else counterfactual
    rows = len(column)
    values = np.zeros((rows, len(actions)), dtype=np.float64)
    has = np.zeros((rows, len(actions)), dtype=bool)
    if rows == 0 or WAIT not in actions:
        return values, has
    flat = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy()
    index = {name: i for i, name in enumerate(actions)}
    names = flat.field("action").to_pylist()
    unknown = sorted({str(n) for n in names if n not in index})
    if unknown:
        raise EsperError(f"counterfactual values name actions {unknown} outside the pack's actions {list(actions)}")
    q = pc.fill_null(pc.cast(flat.field("value"), pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
    if not np.isfinite(q).all():
        raise EsperError(f"{int((~np.isfinite(q)).sum())} counterfactual values are missing or not finite; "
                         "expected a finite value for every stored action")
    columns = np.array([index[n] for n in names], dtype=np.int64)
    if len(set(zip(parents.tolist(), columns.tolist(), strict=True))) != len(columns):
        raise EsperError("a step stores two counterfactual values for the same action; expected one per action")
    values[parents, columns] = q
    has[parents, columns] = True
    wait = index[WAIT]
    has &= has[:, [wait]]  # without Q(s, WAIT) there is nothing to measure an advantage against
    values = np.where(has, values - values[:, [wait]], 0.0)
    return values, has


def regret(chosen: np.ndarray, advantages: np.ndarray, has: np.ndarray) -> float | None:
    """Mean value lost by the chosen actions against each step's best, over steps with stored values
    (the chosen action's among them); None without such steps."""
    rows = np.flatnonzero(has[np.arange(len(chosen)), chosen]) if len(chosen) else np.array([], dtype=np.int64)
    if len(rows) == 0:
        return None
    best = np.where(has[rows], advantages[rows], -np.inf).max(axis=1)
    return float(np.mean(best - advantages[rows, chosen[rows]]))
