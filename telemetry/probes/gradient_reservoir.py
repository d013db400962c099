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
from dataclasses import dataclass

import numpy as np
import torch

from telemetry.probes import gradient_histogram

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


@dataclass(frozen=True)
class Filled:
    """The pool positions the layers can fill, layer after layer: a layer no larger than a block fills
    the first `numel` positions of each block (the rest stay marked), a larger one its whole row.
    Reading only these (not rows of `sample_size` that are mostly marks) is what keeps the step's
    end cheap for small layers."""

    index: torch.Tensor  # [n] long: flat positions in the pool
    layer: torch.Tensor  # [n] long: the layer of each position
    bounds: tuple[int, ...]  # layer l's positions are index[bounds[l]:bounds[l + 1]]


def filled_positions(lengths: list[int], blocks: int, block: int, device: torch.device) -> Filled:
    width = blocks * block
    parts, layers, bounds = [], [], [0]
    for row, numel in enumerate(lengths):
        if 0 < numel <= block:
            cols = (torch.arange(blocks)[:, None] * block + torch.arange(numel)[None, :]).reshape(-1)
        else:
            cols = torch.arange(width)
        parts.append(row * width + cols)
        layers.append(torch.full((cols.numel(),), row))
        bounds.append(bounds[-1] + cols.numel())
    return Filled(torch.cat(parts).to(device), torch.cat(layers).to(device), tuple(bounds))


def step_statistics(pool: torch.Tensor, filled: Filled, vanishing: float, exploding: float,
                    percentiles: list[int], histogram: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """([layers, 3] shares of pooled |g| under `vanishing`, over `exploding` and non-finite;
    [layers, len(percentiles) + histogram bins]), marked positions ignored (NaN ignored by the
    percentiles and histograms, counted by the shares)."""
    values = pool.reshape(-1).index_select(0, filled.index)
    n_layers = len(filled.bounds) - 1
    present = ~(values < 0)  # MARK is negative; NaN compares false, so NaN gradients count as present
    flags = torch.stack([(values < vanishing) & present, values > exploding, ~torch.isfinite(values), present], 1)
    counts = values.new_zeros(n_layers, 4, dtype=torch.float64).index_add_(0, filled.layer, flags.double())
    shares = counts[:, :3] / counts[:, 3:].clamp(min=1)
    per_layer = [values.new_zeros(n_layers, 0)]
    if percentiles:
        q = torch.tensor(percentiles, dtype=torch.float32, device=pool.device) / 100
        data = torch.where(present, values, torch.nan)
        b = filled.bounds
        per_layer.append(torch.stack([torch.nanquantile(data[b[i]:b[i + 1]], q) for i in range(n_layers)]))
    if histogram:
        per_layer.append(gradient_histogram.histogram(values, filled.layer, n_layers))
    return shares, torch.cat(per_layer, dim=1)
