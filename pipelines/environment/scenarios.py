"""Scenarios: the hidden cause of each episode, one specific way in which training goes wrong.

Every episode draws one scenario and its parameters from a generator seeded by (seed, episode index).
The scenario changes how the host is configured (learning rate, initialisation) or what it is
trained on (fewer examples, noisy labels); it is never written into the features. It is recorded
per episode as the cause a policy has to infer from the telemetry.

The causes are chosen so that the best action depends on the cause (issue 12): two stalls near
chance need different seeds, and the seed that rescues them wrecks a noisy host. Measured at n=60
on `digits_hard` with the seed slot after block 3 (docs/experiments/control-check-v3.json):

- healthy: nothing goes wrong; every seed only costs.
- lr_too_low: host lr 60-1000x below nominal, a stall near chance or a slow learner; the residual
  conv seed (trained at the nominal rate) rescues it (+55 points), the renorm seed barely. The range
  reaches up to 1/60 so that the training loss overlaps the other stalls' (below 1/300 alone it sat
  in its initialisation band, which named the cause: tests/pipelines/environment/test_cause_leaks.py).
- lr_too_high: host lr 50-100x above nominal; noisy, waiting is best, and the renorm `norm` seed
  wrecks it (some hosts collapse to chance).
- vanishing_gradients: batch-norm gains and head scaled by 0.015-0.03, a stall; the renorm seed
  rescues it (+51), conv does not.
- dead_units: bn3's bias shifted by -4..-3, so the ReLUs after the last block die: a stall that
  partly recovers; the renorm seed rescues it, conv does not.
- overfitting: 4-10% of the examples, or 20-40% with 30-50% of labels wrong. Extra capacity cannot
  help, so waiting saves the parameters.

`REMEDIES` names each cause's remedy blueprint (None: wait); only the privileged expert and the
counterfactual "replant" continuation read it, never a feature. Seeds are trained by their own
optimizer group at the nominal learning rate, so a seed is a real remedy for a host whose own rate
is too low. lr_too_low, vanishing_gradients and dead_units look alike in the loss curves and need
different remedies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

SCENARIOS = ("healthy", "lr_too_low", "lr_too_high", "vanishing_gradients", "dead_units", "overfitting")
REMEDIES: dict[str, str | None] = {"healthy": None, "lr_too_low": "conv", "lr_too_high": None,
                                   "vanishing_gradients": "norm", "dead_units": "norm", "overfitting": None}
NOMINAL_LR = 0.05
HOST_NORMS = ("bn1", "bn2", "bn3")
SCENARIO_STREAM = 0x5CE7A210  # separates the scenario draw from every other stream of the episode


@dataclass(frozen=True)
class Scenario:
    """The hidden cause and its parameters; defaults describe a healthy run."""

    name: str = "healthy"
    lr: float = NOMINAL_LR
    width: float = 1.0
    init_scale: float = 1.0
    train_fraction: float = 1.0
    label_noise: float = 0.0
    dead_shift: float = 0.0  # added to bn3's bias: the ReLUs after the last block die (dead_units)

    def params(self) -> dict[str, float | str]:
        """Flat mapping for the episodes table."""
        return asdict(self)

    def initialise(self, model: nn.Module) -> None:
        """Scale every host batch-norm gain and the head by `init_scale`. Small gains shrink the
        signal block after block until batch norm's epsilon dominates the variance it divides by,
        so activations and the gradients flowing back through them stay small (vanishing gradients).
        Shift bn3's bias by `dead_shift`: most units after the last block start (and stay) dead."""
        with torch.no_grad():
            if self.init_scale != 1.0:
                for name in HOST_NORMS:
                    getattr(model, name).weight.mul_(self.init_scale)
                model.fc.weight.mul_(self.init_scale)
            if self.dead_shift:
                model.bn3.bias.add_(self.dead_shift)

    def training_set(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples and labels this episode trains on: a subset and/or noisy labels."""
        n = len(y)
        keep = max(num_classes, int(round(n * self.train_fraction)))
        idx = np.sort(rng.permutation(n)[:keep])
        x, y = x[idx], y[idx].clone()
        if self.label_noise > 0:
            flip = rng.random(keep) < self.label_noise
            y[torch.from_numpy(flip)] = torch.from_numpy(rng.integers(0, num_classes, size=int(flip.sum())))
        return x, y


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _draw_params(name: str, rng: np.random.Generator) -> Scenario:
    base = Scenario(name=name, lr=_log_uniform(rng, 0.7 * NOMINAL_LR, 1.4 * NOMINAL_LR))
    if name == "healthy":
        return base
    if name == "lr_too_low":
        return replace(base, lr=_log_uniform(rng, NOMINAL_LR / 1000, NOMINAL_LR / 60))
    if name == "lr_too_high":
        return replace(base, lr=_log_uniform(rng, NOMINAL_LR * 50, NOMINAL_LR * 100))
    if name == "vanishing_gradients":
        return replace(base, init_scale=_log_uniform(rng, 0.015, 0.03))
    if name == "dead_units":
        return replace(base, dead_shift=float(rng.uniform(-4.0, -3.0)))
    if name == "overfitting":
        if rng.random() < 0.5:
            return replace(base, train_fraction=float(rng.uniform(0.04, 0.1)))
        return replace(base, train_fraction=float(rng.uniform(0.2, 0.4)),
                       label_noise=float(rng.uniform(0.3, 0.5)))
    raise ValueError(f"unknown scenario {name!r}; expected one of: {', '.join(SCENARIOS)}")


def draw_scenario(rng_seed: int, episode: int, names: tuple[str, ...] = SCENARIOS) -> Scenario:
    """The scenario of episode `episode` of a run seeded `rng_seed`: uniform over `names`, then its params."""
    rng = np.random.default_rng(np.random.SeedSequence([rng_seed, episode, SCENARIO_STREAM]))
    name = names[int(rng.integers(len(names)))]
    return _draw_params(name, rng)


def scenario_from(name: str, entropy: list[int]) -> Scenario:
    """Scenario `name` with parameters drawn from a seed sequence of its own (an evaluation set's
    namespace): the same distribution as `draw_scenario`'s, from streams no pack episode uses."""
    return _draw_params(name, np.random.default_rng(np.random.SeedSequence(entropy)))


def make_scenario(name: str, rng_seed: int = 0, episode: int = 0) -> Scenario:
    """Scenario `name` with parameters drawn as `draw_scenario` would (for tests and fixed-cause runs)."""
    return draw_scenario(rng_seed, episode, names=(name,))
