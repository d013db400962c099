"""The pooled sample of |g| per layer that gradient percentiles and histograms are computed from.

Percentiles and histograms of |g| come from a pool of `sample_size` positions per layer, 16 blocks of
`sample_size / 16`. Each of the step's first 16 batches fills one block (every element of a layer no
larger than a block, else uniform draws); from batch b > 16 on, every position is replaced
independently with probability 1/b by a fresh draw from batch b. Each position thus comes from a
uniformly chosen batch of the step, independently of the others: no batch is kept or dropped whole
(which, when batches differ, is far outside the bound below), and every batch weighs the same.
With n pooled elements the reported q-th percentile lies between the true (q - e)-th and (q + e)-th
percentiles of the step's pooled |g| with probability at least 1 - d, where
e = 100 * sqrt(ln(2 / d) / (2 n)) (Dvoretzky-Kiefer-Wolfowitz); for n = 65,536 and d = 1e-6,
e = 1.05 percentile points. Layers no larger than a block are measured exactly while the step has at
most 16 batches (beyond that, block position o still holds element o, from a uniformly chosen batch).

Which positions are replaced never depends on gradient values: how many is drawn on the host
(binomial), which ones on the device (a random permutation), so sampling never synchronises.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RESERVOIR_BATCHES = 16


def percentile_error_bound(n: int, delta: float = 1e-6) -> float:
    """DKW bound, in percentile points, on the sampled percentile's rank error (see module docstring)."""
    return 100.0 * math.sqrt(math.log(2.0 / delta) / (2.0 * n))


def block_size(sample_size: int) -> int:
    return max(1, sample_size // RESERVOIR_BATCHES)


def sample_into(pool: torch.Tensor | None, batch: int, a: torch.Tensor, offsets: torch.Tensor,
                numel: torch.Tensor, valid: torch.Tensor, block: int, rng: np.random.Generator,
                gen: torch.Generator) -> torch.Tensor:
    """The pool after the step's `batch`-th (1-based) sampled batch of |g| (`a`, all layers flat).

    Batch b <= 16 fills block b; a later batch b replaces each position with probability 1/b.
    `offsets` and `numel` give each layer's slice of `a`; `valid` marks layers with gradients.
    """
    width = RESERVOIR_BATCHES * block
    if pool is None:
        pool = torch.full((len(numel), width), math.nan, device=a.device)
    if batch <= RESERVOIR_BATCHES:
        slots = None
        offset = torch.arange(block, device=a.device, dtype=torch.float32)
    else:
        k = int(rng.binomial(width, 1.0 / batch))
        if k == 0:
            return pool
        slots = torch.randperm(width, generator=gen, device=a.device)[:k]
        offset = (slots % block).float()
    # small layers: position o of every block holds element o (the rest NaN, ignored)
    exact = numel[:, None] <= block
    draws = torch.rand(len(numel), offset.numel(), generator=gen, device=a.device)
    random_pos = draws * numel[:, None]
    pos = torch.minimum(torch.where(exact, offset, random_pos), (numel[:, None] - 1).clamp(min=0)).long()
    keep = (~exact | (offset < numel[:, None])) & valid[:, None]
    picked = torch.where(keep, a[(offsets[:, None] + pos).clamp(max=a.numel() - 1)], torch.nan)
    if slots is None:
        pool[:, (batch - 1) * block: batch * block] = picked
    else:
        pool[:, slots] = picked
    return pool


def filled(row: torch.Tensor, numel: int, blocks: int, block: int) -> torch.Tensor:
    """The pool positions a layer can fill: a layer no larger than a block fills the first `numel`
    positions of each block, the rest stay NaN. Sorting only those (not a mostly-NaN row of
    `sample_size`) is what makes percentiles of small layers cheap."""
    if 0 < numel <= block:
        return row.view(blocks, block)[:, :numel].reshape(-1)
    return row


def percentiles(pool: torch.Tensor, lengths: list[int], blocks: int, block: int,
                percentiles: list[int]) -> torch.Tensor:
    """[layers, len(percentiles)] from the pooled sample (NaN positions ignored)."""
    q = torch.tensor(percentiles, dtype=torch.float32, device=pool.device) / 100
    rows = [filled(pool[i], n, blocks, block) for i, n in enumerate(lengths)]
    return torch.stack([torch.nanquantile(r, q) for r in rows])
