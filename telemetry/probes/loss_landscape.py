"""Sharpness: how much the loss rises under small random, filter-normalised weight perturbations.

Each sample draws a Gaussian direction, rescales it filter by filter to the norm of the weights it
perturbs (Li et al., 2018; 1-D parameters such as biases and norm scales are left unperturbed), adds
`perturbation_scale` times it, and measures the loss on a fixed probe batch in eval mode. Weights are
restored from a copy (bit-exact), eval mode leaves batch-norm statistics alone, and the noise comes
from a private generator so the training RNG stream is untouched.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from telemetry.feature_schema import FeatureSpec
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if


class LossLandscapeProbe(Probe):
    group = "loss_landscape"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.cfg = ctx.config.loss_landscape
        self.add_state("steps", 0, per_step=False)  # each step draws its own directions
        self.add_state("last", torch.full((3,), math.nan, dtype=torch.float64), per_step=False)

    def features(self) -> list[FeatureSpec]:
        s, k = self.spec, self.cfg.every_n_steps
        sched = (f"; measured once in every {k} decision steps (the first one included), the last "
                 "measurement repeated between") if k > 1 else ""
        return [
            s("probe_loss", "loss on the fixed probe batch, eval mode, unperturbed" + sched, "nats"),
            s("sharpness_mean", "mean loss increase under filter-normalised random perturbations" + sched, "nats"),
            s("sharpness_max", "largest loss increase under filter-normalised random perturbations" + sched, "nats"),
        ]

    def payload(self, probe_batch: tuple[torch.Tensor, torch.Tensor] | None) -> list[torch.Tensor]:
        self.steps += 1
        if (self.steps - 1) % self.cfg.every_n_steps:
            return [self.last]
        if probe_batch is None:
            self.last = torch.full((3,), math.nan, dtype=torch.float64)
        else:
            self.last = sharpness(self.ctx.model, probe_batch, self.cfg.perturbation_samples,
                                  self.cfg.perturbation_scale, rng_seed=self.ctx.rng_seed * 1_000_003 + self.steps)
        return [self.last]

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        missing = bool(np.isnan(host).all())
        names = ("probe_loss", "sharpness_mean", "sharpness_max")
        return {name: none_if(missing, v) for name, v in zip(names, host, strict=True)}


@torch.no_grad()
def sharpness(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], samples: int, scale: float,
              rng_seed: int) -> torch.Tensor:
    """[base loss, mean increase, max increase] as one device tensor; the model is left bit-exact."""
    x, y = batch
    params = [p for p in model.parameters()]
    saved = [p.detach().clone() for p in params]
    modes = {m: m.training for m in model.modules()}
    device = params[0].device if params else x.device
    gen = torch.Generator(device=device)
    gen.manual_seed(rng_seed)
    # only weights (dim > 1) are perturbed: their filter norms are taken once, and after each sample
    # they alone are restored, in one multi-tensor copy (bit-exact)
    perturbed = [(p, w, _filter_norms(w)) for p, w in zip(params, saved, strict=True) if p.dim() > 1]
    model.eval()
    try:
        base = F.cross_entropy(model(x), y)
        increases = []
        for _ in range(samples):
            for p, w, norms in perturbed:
                p.add_(_filter_normalised(w, norms, gen), alpha=scale)
            increases.append(F.cross_entropy(model(x), y) - base)
            if perturbed:
                torch._foreach_copy_([p for p, _, _ in perturbed], [w for _, w, _ in perturbed])
        inc = torch.stack(increases)
        return torch.stack([base, inc.mean(), inc.max()]).double()
    finally:
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)
        for m, training in modes.items():
            m.training = training


def _filter_norms(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)


def _filter_normalised(w: torch.Tensor, norms: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    d = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
    return d * (norms / _filter_norms(d).clamp(min=1e-12))
