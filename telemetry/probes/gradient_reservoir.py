"""The pooled sample of |g| per layer that gradient percentiles, histograms and shares are computed from.

The pool holds `sample_size` positions per layer, 16 blocks of `sample_size / 16`. Each of the step's
first 16 sampled batches contributes its per-batch element sample (gradient_sample.py) as one block:
every element of a layer no larger than a block, else uniform draws. From batch b > 16 on, every
position is replaced independently with probability 1/b by a fresh draw from batch b. Each position
thus comes from a uniformly chosen batch of the step, independently of the others: no batch is kept
or dropped whole (which, when batches differ, is far outside the bound below), and every batch
weighs the same.

With n pooled elements, the reported q-th percentile lies between the true (q - e)-th and (q + e)-th
percentiles of the step's pooled |g|, and every reported share of elements under or over a threshold
lies within e percentage points of the true share, with probability at least 1 - d, where
e = 100 * sqrt(ln(2 / d) / (2 n)) (Dvoretzky-Kiefer-Wolfowitz); for n = 65,536 and d = 1e-6,
e = 1.05 percentage points. Layers no larger than a block are measured exactly while the step has
at most 16 batches (beyond that, block position o still holds element o, from a uniformly chosen
batch).

Positions that hold no element (past a small layer's size, or of a layer without gradients in that
batch) are marked gradient_sample.MARK (-1, which no |g| can be); NaN and Inf gradients are kept as data. Which
positions are replaced never depends on gradient values: how many is drawn on the host (binomial),
which ones on the device (a random permutation), so sampling never synchronises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

RESERVOIR_BATCHES = 16


def percentile_error_bound(n: int, delta: float = 1e-6) -> float:
    """DKW bound, in percentile points, on the sampled percentile's rank error (see module docstring)."""
    return 100.0 * math.sqrt(math.log(2.0 / delta) / (2.0 * n))


def block_size(sample_size: int) -> int:
    return max(1, sample_size // RESERVOIR_BATCHES)


def marked(sample: torch.Tensor, pad: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
    """A per-batch sample as a pool block: |g|, and `mark` (MARK, a cached 0-d tensor: a Python
    scalar would cost an operator per batch) where a column holds no element."""
    return torch.where(pad, mark, sample.abs())


def add(pool: list[torch.Tensor] | torch.Tensor | None, batch: int, block: torch.Tensor,
        exact: torch.Tensor, rng: np.random.Generator, gen: torch.Generator,
        fresh: Callable[[], torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
    """The pool after the step's `batch`-th (1-based) sampled batch, whose sample is `block`.

    Batches 1-16 append their block (the pool is a list of blocks until then); a later batch b
    replaces each position with probability 1/b, from `block` (exact layers: column o holds
    element o; `exact` is [layers, 1]) or, beyond its width, from further `fresh()` draws.
    """
    if batch <= RESERVOIR_BATCHES:
        return [*(pool or []), block]
    if isinstance(pool, list):
        pool = torch.cat(pool, dim=1)
    width, per_batch = pool.shape[1], block.shape[1]
    k = int(rng.binomial(width, 1.0 / batch))
    if k == 0:
        return pool
    slots = torch.randperm(width, generator=gen, device=pool.device)[:k]
    draws = block if k <= per_batch else torch.cat([block, *(fresh() for _ in range((k - 1) // per_batch))], 1)
    values = torch.where(exact, block.index_select(1, slots % per_batch), draws[:, :k])
    return pool.index_copy_(1, slots, values)


def joined(pool: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return torch.cat(pool, dim=1) if isinstance(pool, list) else pool


def shares(pool: torch.Tensor, vanishing: float, exploding: float) -> torch.Tensor:
    """[layers, 3]: shares of pooled |g| under `vanishing`, over `exploding`, and non-finite."""
    present = ~(pool < 0)  # MARK is negative; NaN compares false, so NaN gradients count as present
    n = present.sum(1).clamp(min=1)
    counts = torch.stack([(pool < vanishing) & present, pool > exploding, ~torch.isfinite(pool)]).sum(2)
    return (counts.double() / n).T


def filled(row: torch.Tensor, numel: int, blocks: int, block: int) -> torch.Tensor:
    """The pool positions a layer can fill: a layer no larger than a block fills the first `numel`
    positions of each block, the rest stay marked. Sorting only those (not a mostly empty row of
    `sample_size`) is what makes percentiles of small layers cheap."""
    if 0 < numel <= block:
        return row.view(blocks, block)[:, :numel].reshape(-1)
    return row


def percentiles(pool: torch.Tensor, lengths: list[int], blocks: int, block: int,
                percentiles: list[int]) -> torch.Tensor:
    """[layers, len(percentiles)] from the pooled sample (marked positions and NaN ignored)."""
    q = torch.tensor(percentiles, dtype=torch.float32, device=pool.device) / 100
    values = without_marks(pool)
    rows = [filled(values[i], n, blocks, block) for i, n in enumerate(lengths)]
    return torch.stack([torch.nanquantile(r, q) for r in rows])


def without_marks(pool: torch.Tensor) -> torch.Tensor:
    """The pool with marked positions as NaN, for statistics that skip NaN."""
    return torch.where(pool < 0, torch.nan, pool)
