"""A small slotted host and the train/validate loops the tracker tests drive it with."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 5


class Slot(nn.Module):
    """A seed slot: identity while empty, `x + seed(x)` once a seed is planted."""

    def __init__(self) -> None:
        super().__init__()
        self.seed: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.seed is None else x + self.seed(x)


class SlotNet(nn.Module):
    """A small host with two 64-channel seed slots, dropout and batch norm; speaks `seed_slots()`."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.slot0 = Slot()
        self.slot1 = Slot()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.slot1(self.slot0(F.relu(self.bn(self.conv(x)))))
        return self.fc(self.drop(F.adaptive_avg_pool2d(x, 1).flatten(1)))

    def seed_slots(self) -> dict[str, nn.Module | None]:
        return {"slot0": self.slot0.seed, "slot1": self.slot1.seed}


def batches(n: int, size: int = 4, seed: int = 0, side: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, side, side, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
            for _ in range(n)]


def train(model, tracker, data, opt, wrap=None) -> None:
    model.train()
    for x, y in data:
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        with wrap() if wrap else nothing():
            tracker.train_batch(loss, logits, y)
        opt.step()


def validate(model, tracker, data, wrap=None) -> None:
    model.eval()
    with torch.no_grad(), tracker.validating():
        for x, y in data:
            with wrap() if wrap else nothing():
                tracker.val_batch(model(x), y, inputs=x)


@contextmanager
def nothing() -> Iterator[None]:
    yield


def bits(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: bits(v) for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: None if p.grad is None else bits(p.grad) for k, p in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "torch_rng": bits(torch.get_rng_state()),
        "python_rng": random.getstate(),
        "numpy_rng": repr(np.random.get_state()),
    }
