"""Histograms of |g| per layer over fixed decade bins, from the pooled sample (gradient_reservoir.py)."""

from __future__ import annotations

import torch

HIST_EDGES = [10.0**k for k in range(-10, 4)]  # |g| bins: [0,1e-10), ..., [1e2,1e3), [1e3,inf)
BINS = len(HIST_EDGES) + 1


def bin_label(i: int) -> str:
    lo = "0" if i == 0 else f"{HIST_EDGES[i - 1]:.0e}"
    hi = "inf" if i == len(HIST_EDGES) else f"{HIST_EDGES[i]:.0e}"
    return f"[{lo}, {hi})"


def histogram(values: torch.Tensor, layer: torch.Tensor, n_layers: int) -> torch.Tensor:
    """[layers, BINS]: each layer's share of pooled |g| per bin; `layer` gives each value's layer.
    Negative values (the pool's marks) and NaN are ignored."""
    edges = torch.tensor(HIST_EDGES, dtype=values.dtype, device=values.device)
    present = values >= 0  # false for marks and NaN
    bins = torch.bucketize(values.nan_to_num(0.0), edges, right=True)
    counts = torch.zeros(n_layers * BINS, device=values.device)
    counts.index_add_(0, layer * BINS + bins, present.float())
    counts = counts.view(n_layers, BINS)
    return counts / counts.sum(1, keepdim=True).clamp(min=1)
