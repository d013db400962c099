"""The host network: REFERENCE.md's three-block CNN with seed slots between blocks.

Module names are stable (`conv1`, `bn1`, ..., `fc`, `slot1`) because telemetry profiles name them:
the standard profile's `["conv1", "conv2", "fc"]` resolves against this model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SeedSlot(nn.Module):
    """A place in the host where a seed can grow; empty, it is the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.seed: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.seed is None else self.seed(x)


class HostCNN(nn.Module):
    """conv-BN-ReLU-maxpool x3 (3 -> 32 -> 64 -> 128 channels x width), global pooling, linear head."""

    SLOT_AFTER_BLOCK = {"slot1": 2, "slot0": 1, "slot2": 3}

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 slots: tuple[str, ...] = ("slot1",)) -> None:
        super().__init__()
        c1, c2, c3 = (max(4, round(c * width)) for c in (32, 64, 128))
        self.conv1, self.bn1 = nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)
        channels = {1: c1, 2: c2, 3: c3}
        for name in slots:
            self.add_module(name, SeedSlot(channels[self.SLOT_AFTER_BLOCK[name]]))
        self.slot_names = tuple(slots)

    def _slot(self, block: int, x: torch.Tensor) -> torch.Tensor:
        for name in self.slot_names:
            if self.SLOT_AFTER_BLOCK[name] == block:
                x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._slot(1, F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2))
        x = self._slot(2, F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2))
        x = self._slot(3, F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def seed_slots(self) -> dict[str, nn.Module | None]:
        """Slot name -> the seed module living there (None when empty); the tracker's seed protocol."""
        return {name: getattr(self, name).seed for name in self.slot_names}
