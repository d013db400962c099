"""Episodes as sequences: a split's rows regrouped per episode, in step order, padded to one length.

The GRU reads an episode's feature rows from its first decision to the current one, so training
must hand it whole episodes in step order, not the rows the pack stores in file order. Padding goes
at the end of the shorter episodes; the GRU is causal, so padding never changes an earlier output,
and padded positions are marked unlabelled so they never enter a loss or a score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def episode_rows(episode_ids: Sequence[str], steps: Sequence[int]) -> list[np.ndarray]:
    """Each episode's row indices in step order; episodes in the order they first appear."""
    groups: dict[str, list[int]] = {}
    for i, episode in enumerate(episode_ids):
        groups.setdefault(episode, []).append(i)
    order = np.asarray(steps)
    return [np.array(sorted(rows, key=order.__getitem__), dtype=np.int64) for rows in groups.values()]


def padded(values: torch.Tensor, episodes: list[np.ndarray], fill: float | bool | int) -> torch.Tensor:
    """[rows, ...] -> [episodes, longest episode, ...], each episode's rows first, then `fill`."""
    longest = max((len(rows) for rows in episodes), default=0)
    out = torch.full((len(episodes), longest, *values.shape[1:]), fill, dtype=values.dtype)
    for e, rows in enumerate(episodes):
        out[e, :len(rows)] = values[torch.from_numpy(rows)]
    return out
