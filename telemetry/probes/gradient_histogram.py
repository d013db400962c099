"""Histograms of |g| per layer over fixed decade bins, from the pooled sample (gradient_reservoir.py)."""

from __future__ import annotations

import torch

HIST_EDGES = [10.0**k for k in range(-10, 4)]  # |g| bins: [0,1e-10), ..., [1e2,1e3), [1e3,inf)
BINS = len(HIST_EDGES) + 1


def bin_label(i: int) -> str:
    lo = "0" if i == 0 else f"{HIST_EDGES[i - 1]:.0e}"
    hi = "inf" if i == len(HIST_EDGES) else f"{HIST_EDGES[i]:.0e}"
    return f"[{lo}, {hi})"


def histogram(pool: torch.Tensor) -> torch.Tensor:
    """[layers, BINS]: each layer's share of pooled |g| per bin (NaN positions ignored)."""
    edges = torch.tensor(HIST_EDGES, dtype=torch.float32, device=pool.device)
    present = ~torch.isnan(pool)
    bins = torch.bucketize(pool.nan_to_num(0.0), edges, right=True)
    counts = torch.zeros(pool.shape[0], BINS, device=pool.device)
    counts.scatter_add_(1, bins, present.float())
    return counts / present.sum(1, keepdim=True).clamp(min=1)
