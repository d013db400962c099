"""A small model for the library's tests, shaped like the reference host but independent of it.

Its named modules with parameters (`conv1`, `bn1`, ..., `fc`) and its seed slot (`slot1`, through
`seed_slots()`, the tracker's seed protocol) are what the built-in profiles resolve against, so it
gives the same feature schemas as the reference host without importing the pipelines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# REFERENCE.md's 27 base features, in order: positions 0-26 of every profile (written out once).
BASE_27 = [
    "epoch", "global_step", "train_loss", "val_loss", "loss_delta", "train_accuracy", "val_accuracy",
    "accuracy_delta", "plateau_epochs", "best_val_accuracy", "best_val_loss",
    "val_loss_lag4", "val_loss_lag3", "val_loss_lag2", "val_loss_lag1", "val_loss_lag0",
    "val_accuracy_lag4", "val_accuracy_lag3", "val_accuracy_lag2", "val_accuracy_lag1", "val_accuracy_lag0",
    "has_active_seed", "seed_stage", "seed_epochs_in_stage", "seed_alpha", "seed_improvement", "available_slots",
]
# The lifecycle group (telemetry/probes/lifecycle.py), positions 27-40 in every profile.
LIFECYCLE = [
    "seed_path_accuracy", "seed_path_gain", "seed_path_valid", "isolated_seed_loss",
    *[f"live_blueprint_{b}" for b in ("conv", "attention", "norm", "depthwise")],
    *[f"tried_{b}" for b in ("conv", "attention", "norm", "depthwise")],
    "seed_param_share", "param_epochs",
]
MINIMAL = BASE_27 + LIFECYCLE


class Slot(nn.Module):
    """Passes its input through, or through the seed planted in it."""

    def __init__(self) -> None:
        super().__init__()
        self.seed: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.seed is None else self.seed(x)


class ReferenceCNN(nn.Module):
    """conv-BN-ReLU x3 (32, 64, 128 channels x width), a slot after block 2, global pooling, linear head.

    A block max-pools while its input is at least 8 pixels wide (8x8 inputs pool once)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (max(4, round(c * width)) for c in (32, 64, 128))
        self.conv1, self.bn1 = nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)
        self.slot1 = Slot()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (1, 2, 3):
            conv, bn = getattr(self, f"conv{block}"), getattr(self, f"bn{block}")
            x = F.relu(bn(conv(x)))
            x = F.max_pool2d(x, 2) if x.shape[-1] >= 8 else x
            if block == 2:
                x = self.slot1(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def seed_slots(self) -> dict[str, nn.Module | None]:
        return {"slot1": self.slot1.seed}


class TinyNet(nn.Module):
    """conv (112 gradient elements), bn (8), fc1 (2,600), fc2 (205): small and large layers together."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(64, 40)
        self.fc2 = nn.Linear(40, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class DeepMLP(nn.Module):
    """`depth` Linear layers named fc0 ... fc{depth-1}, ReLU between: a model whose depth is one knob."""

    def __init__(self, depth: int, width: int = 32, inputs: int = 48, classes: int = 10) -> None:
        super().__init__()
        sizes = [inputs] + [width] * (depth - 1) + [classes]
        for i in range(depth):
            self.add_module(f"fc{i}", nn.Linear(sizes[i], sizes[i + 1]))
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(self.depth):
            x = getattr(self, f"fc{i}")(x)
            x = F.relu(x) if i < self.depth - 1 else x
        return x
