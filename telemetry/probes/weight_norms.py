"""Per-layer weight norms, from one multi-tensor norm at the end of the step."""

from __future__ import annotations

import numpy as np
import torch

from telemetry.feature_schema import FeatureSpec
from telemetry.layers import feature_key
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value


class WeightNormProbe(Probe):
    group = "weight_norms"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        recurse = ctx.config.gradients.layers != "all"
        self.params = [list(m.parameters(recurse=recurse)) for _, m in ctx.layers]
        self.keys = [feature_key(name) for name, _ in ctx.layers]

    def features(self) -> list[FeatureSpec]:
        return [self.spec(f"weight_norm_{k}", f"L2 norm of {k}'s parameters at the end of the step", "norm")
                for k in self.keys]

    @torch.no_grad()
    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        flat = [p.detach() for params in self.params for p in params]
        norms = torch.stack(torch._foreach_norm(flat)).double() ** 2
        layer = torch.tensor([i for i, params in enumerate(self.params) for _ in params], device=norms.device)
        total = torch.zeros(len(self.params), dtype=torch.float64, device=norms.device)
        return [total.index_add_(0, layer, norms).sqrt()]

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        return {f"weight_norm_{k}": float(v) for k, v in zip(self.keys, host, strict=True)}
