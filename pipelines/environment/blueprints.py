"""Seed blueprints: small modules that map C channels to C channels.

`conv`, `attention` and `depthwise` are initialised so that `seed(x) == x` for the non-negative
activations a slot sees (slots sit after a ReLU): the last learned scale of each residual branch
starts at zero, so a fresh seed cannot damage the host when it is blended in, and what it adds is
exactly what it learned. Gradients still reach every parameter at initialisation, because the zero
sits on a multiplicative scale rather than behind a ReLU.

`norm` (`Renorm`) is deliberately not the identity: it adds a unit-scale, per-sample renormalised
copy of the features from the start. That is what makes it the remedy of a collapsed activation
scale (vanishing gains, dead units after the last block) and a harm to a host trained at a far too
high learning rate: the environment needs remedies that depend on the cause (issue 12).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConv(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, added to the input (a ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class SqueezeExcite(nn.Module):
    """Channel attention: x * 2 sigmoid(W2 relu(W1 avgpool(x))); W2 = 0 makes the gate exactly 1."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(2, channels // reduction)
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)
        nn.init.zeros_(self.excite.weight)
        nn.init.zeros_(self.excite.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3)))))
        return x * (2.0 * torch.sigmoid(z))[:, :, None, None]


def group_count(channels: int, target: int = 8) -> int:
    """The largest group count <= target that divides `channels` and leaves >= 2 channels a group."""
    for groups in range(min(target, channels // 2), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class Renorm(nn.Module):
    """x + scale * GroupNorm(x), scale per channel starting at `init` (1): renormalises features.

    Not the identity at germination: it lifts a collapsed activation scale at once; the blending
    ramp still phases it in. (A zero start, the old `norm`, could not rescue a vanishing host.)"""

    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels)
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.norm(x)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN, added to the input: cheap spatial mixing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(x + self.bn2(self.pointwise(h)))


BLUEPRINTS: dict[str, Callable[[int], nn.Module]] = {
    "conv": ResidualConv,
    "attention": SqueezeExcite,
    "norm": Renorm,
    "depthwise": DepthwiseSeparable,
}


def build_blueprint(name: str, channels: int) -> nn.Module:
    """A new seed module of blueprint `name` for a slot with `channels` channels."""
    try:
        factory = BLUEPRINTS[name]
    except KeyError:
        raise ValueError(f"unknown blueprint {name!r}; available: {', '.join(BLUEPRINTS)}") from None
    return factory(channels)
