"""The seed group: one fixed set of features per seed slot, whatever lives in the slot.

A pack's schema never changes while it is written, so a seed germinated mid-episode reports here
(slots are read from the model each batch) and an empty slot reports nulls.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from telemetry.feature_schema import FeatureSpec
from telemetry.layers import feature_key
from telemetry.probes.gradient_sample import sums_of_squares
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if


class SeedProbe(Probe):
    group = "seed"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.keys = [feature_key(s) for s in ctx.slots]
        self.grads = ctx.config.gradients.enabled and ctx.config.gradients.track_norm
        self.weights = ctx.config.track_weight_norms
        n = len(self.keys)
        self.add_state("grad_squares", [[] for _ in range(n)])  # per slot, per batch: the seed's gradient
        # square sum (the norms are taken and summed at the step's end)
        self.add_state("batches", [0] * n)
        self.add_state("params", [None] * n)  # parameter count of the seed found at the step's end

    def features(self) -> list[FeatureSpec]:
        s, out = self.spec, []
        for k in self.keys:
            if self.grads:
                out.append(s(f"seed_{k}_grad_norm",
                             f"gradient L2 norm of the seed in slot {k}, mean over batches", "norm"))
            if self.weights:
                out.append(s(f"seed_{k}_weight_norm", f"L2 norm of the seed's parameters in slot {k}",
                             "norm"))
                out.append(s(f"seed_{k}_param_count", f"parameters of the seed in slot {k} (0 when empty)",
                             "count", "int64"))
        return out

    def _seeds(self) -> list[nn.Module | None]:
        current = self.ctx.model.seed_slots()
        return [current.get(name) for name in self.ctx.slots]

    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        if not self.grads:
            return
        for i, seed in enumerate(self._seeds()):
            grads = [p.grad for p in seed.parameters() if p.grad is not None] if seed is not None else []
            if grads:
                self.grad_squares[i].append(sums_of_squares(grads).sum())
                self.batches[i] += 1

    @torch.no_grad()
    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        out = []
        for i, seed in enumerate(self._seeds()):
            params = [p.detach() for p in seed.parameters()] if seed is not None else []
            squares = self.grad_squares[i]
            grad = torch.stack(squares).sqrt().sum() if squares else torch.zeros((), dtype=torch.float64)
            weight = sums_of_squares(params).sum().sqrt() if params else torch.zeros((), dtype=torch.float64)
            out.append(torch.stack([grad.to(weight.device), weight]))
            self.params[i] = sum(p.numel() for p in params) if seed is not None else None
        return out

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        row: dict[str, Value] = {}
        for key, batches, params, (grad_sum, weight) in zip(self.keys, self.batches, self.params,
                                                            host.reshape(-1, 2), strict=True):
            if self.grads:
                row[f"seed_{key}_grad_norm"] = none_if(batches == 0, grad_sum / max(batches, 1))
            if self.weights:
                row[f"seed_{key}_weight_norm"] = none_if(params is None, weight)
                row[f"seed_{key}_param_count"] = params or 0
        return row
