"""The exact per-batch gradient statistics (`gradients.exact: true`): every element, every batch.

The tracked gradients are concatenated once and reduced per layer with `segment_reduce` (sum, sum
of squares, vanishing / exploding / non-finite counts). Exact to float32 rounding, and what the
sampled default is tested against; but it copies every gradient five times over per batch (20 bytes
per parameter) and its op count grows with the parameter count, so it is for tests and audits.
"""

from __future__ import annotations

import math

import torch

from telemetry.config import GradientConfig


class ExactPass:
    """Per-batch exact statistics; caches per-layer lengths and offsets as device tensors."""

    def __init__(self, cfg: GradientConfig) -> None:
        self.cfg = cfg
        self._cache: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}

    def __call__(self, grads: list[torch.Tensor], lengths: list[int]) -> tuple[torch.Tensor, ...]:
        """([layers, 4] norm, std, vanishing and exploding share (0 for a layer without gradients);
        [layers] norm (-inf for a layer without gradients); non-finite element count)."""
        flat = torch.cat([g.reshape(-1) for g in grads]).float()
        lens, numel, valid = self._layout(lengths, flat.device)
        a = flat.abs()
        cfg = self.cfg
        parts = torch.stack([flat, flat * flat, (a < cfg.vanishing_threshold).float(),
                             (a > cfg.exploding_threshold).float(), (~torch.isfinite(flat)).float()], dim=1)
        # unsafe: skip the length checks, two .item() host syncs per call; lengths are ours and correct
        seg = torch.segment_reduce(parts, "sum", lengths=lens, axis=0, unsafe=True)  # [layers, 5]
        n = numel.clamp(min=1)
        mean = seg[:, 0] / n
        std = (seg[:, 1] / n - mean * mean).clamp(min=0).sqrt()
        norm = seg[:, 1].sqrt()
        stats = torch.stack([norm, std, seg[:, 2] / n, seg[:, 3] / n], dim=1) * valid[:, None]
        return stats, torch.where(valid, norm, -math.inf), seg[:, 4].sum()

    def _layout(self, lengths: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Per-layer lengths as device tensors, cached: building them each batch would sync."""
        key = (*lengths, hash(device))
        if key not in self._cache:
            lens = torch.tensor(lengths, dtype=torch.long)
            self._cache[key] = tuple(t.to(device) for t in (lens, lens.float(), lens > 0))
        return self._cache[key]
