"""Activation statistics from forward hooks that are live during the validation pass only.

Hooks on every training step cost 15-95% of a step elsewhere; on validation they cost a share of a
pass that is cheaper already. The zero share is measured as outputs <= 0, which is exactly the share
a following ReLU zeroes (and the exact zero share after a ReLU); a unit (channel) counts as dead
when it is positive in under 1% of its outputs, and the layer's dead-unit share is reported.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from telemetry.feature_schema import FeatureSpec
from telemetry.layers import feature_key
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if

DEAD_UNIT_ACTIVE_SHARE = 0.01  # SageMaker Debugger's dead-ReLU threshold


class ActivationProbe(Probe):
    group = "activations"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.keys = [feature_key(name) for name, _ in ctx.layers]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        n = len(self.keys)
        # per layer: [sum, sum of squares, outputs <= 0], positive outputs per channel (its shape is
        # known at the first forward), outputs seen
        self.add_state("stats", [None] * n)
        self.add_state("positive", [None] * n)
        self.add_state("seen", [0] * n)

    def features(self) -> list[FeatureSpec]:
        s = self.spec
        out = []
        for k in self.keys:
            out += [
                s(f"act_mean_{k}", f"mean of {k}'s outputs over the validation pass", "activation"),
                s(f"act_std_{k}", f"std of {k}'s outputs over the validation pass", "activation"),
                s(f"act_zero_frac_{k}", f"share of {k}'s outputs <= 0 (zeroed by a following ReLU)",
                  "fraction"),
                s(f"act_dead_unit_frac_{k}", f"share of {k}'s channels positive in < 1% of outputs",
                  "fraction"),
            ]
        return out

    def attach(self) -> None:
        for i, (_, module) in enumerate(self.ctx.layers):
            self._handles.append(module.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if self.ctx.validating and torch.is_tensor(output):
                self._accumulate(i, output.detach())
        return hook

    def _accumulate(self, i: int, out: torch.Tensor) -> None:
        x = out.float()
        dims = [d for d in range(x.dim()) if d != 1] if x.dim() >= 2 else list(range(x.dim()))
        channels = _count(x > 0, dims)
        stats = torch.stack([x.sum(), x.square().sum()]).double()
        stats = torch.cat([stats, _count(x <= 0, dims).sum().reshape(1)])
        if self.stats[i] is None:
            self.stats[i], self.positive[i] = stats, channels
        else:
            self.stats[i] += stats
            self.positive[i] += channels
        self.seen[i] += x.numel()

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        out = []
        for i in range(len(self.keys)):
            if self.stats[i] is None:
                out.append(torch.zeros(4, dtype=torch.float64))
                continue
            per_channel = self.seen[i] / self.positive[i].numel()
            dead = (self.positive[i] / per_channel < DEAD_UNIT_ACTIVE_SHARE).double().mean()
            out.append(torch.cat([self.stats[i], dead.reshape(1)]))
        return out

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        row: dict[str, Value] = {}
        for key, n, (s1, s2, nonpos, dead) in zip(self.keys, self.seen, host.reshape(-1, 4), strict=True):
            mean = s1 / max(n, 1)
            std = np.sqrt(max(s2 / max(n, 1) - mean * mean, 0.0))
            row.update({f"act_mean_{key}": none_if(n == 0, mean), f"act_std_{key}": none_if(n == 0, std),
                        f"act_zero_frac_{key}": none_if(n == 0, nonpos / max(n, 1)),
                        f"act_dead_unit_frac_{key}": none_if(n == 0, dead)})
        return row

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


_EXACT_FLOAT32 = 1 << 24  # float32 adds up to this many ones exactly


def _count(mask: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """True entries per channel (summed over `dims`) as float64 [channels]; [1] for a 0-d or 1-d output.

    Summed as float32 (on a CPU five times faster than summing the bool mask, an int64 reduction),
    which is exact while a channel holds under 2**24 entries; larger outputs are counted in halves
    of the batch, and one sample that large by the exact integer sum."""
    per_channel = mask.numel() // (mask.shape[1] if mask.dim() >= 2 else 1)
    if per_channel < _EXACT_FLOAT32:
        return mask.float().sum(dim=dims).double().reshape(-1)
    if mask.shape[0] > 1:
        half = mask.shape[0] // 2
        return _count(mask[:half], dims) + _count(mask[half:], dims)
    return mask.sum(dim=dims).double().reshape(-1)
