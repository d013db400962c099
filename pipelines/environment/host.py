"""The host network: REFERENCE.md's three-block CNN with seed slots between blocks.

Module names are stable (`conv1`, `bn1`, ..., `fc`, `slot1`) because telemetry profiles name them:
the standard profile's `["conv1", "conv2", "fc"]` resolves against this model. Width and input shape
change channel counts and pooling, never names, so every episode of a pack has the same schema.

What a slot outputs depends on its seed's lifecycle stage:

- empty, GERMINATED, CULLED: `x` (a germinated seed exists and is registered, but is inert);
- TRAINING: `x` on the host path, so the host trains exactly as if the seed were absent. The seed is
  trained in gradient isolation: it sees `x.detach()`, and its output is sent through the rest of
  the host with every host parameter detached and every host buffer left untouched (`frozen_call`).
  `HostCNN.isolated_seed_loss` turns that into a classification loss whose autograd graph contains
  seed parameters only, so backpropagating it cannot put gradient on any host parameter, upstream or
  downstream of the slot. The seed thus learns to produce features the host's later layers can use,
  which is what it will have to do once blended in;
- BLENDING: `alpha * seed(x) + (1 - alpha) * x`, trained jointly through the host's own loss;
- FOSSILIZED: `seed(x)`: the seed is part of the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipelines.environment.lifecycle import IllegalTransition, SeedLifecycle
from telemetry import SeedStage


def frozen_call(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """Run `module` with detached parameters and throwaway copies of its buffers.

    Gradient flows through the computation to the inputs but never into the module's parameters,
    and batch-norm running statistics are updated on copies, so the module is left exactly as it was.
    """
    state = {name: p.detach() for name, p in module.named_parameters()}
    state.update({name: b.clone() for name, b in module.named_buffers()})
    return functional_call(module, state, args)


class SeedSlot(nn.Module):
    """A place in the host where a seed can grow; what it outputs follows the seed's lifecycle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.seed: nn.Module | None = None
        self.lifecycle = SeedLifecycle()
        self._isolated: torch.Tensor | None = None
        self.substitute = False  # evaluation only: a TRAINING seed replaces the slot's output

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def stage(self) -> SeedStage:
        return self.lifecycle.stage

    @property
    def alpha(self) -> float:
        return self.lifecycle.alpha

    @property
    def can_germinate(self) -> bool:
        return self.seed is None and self.stage in (SeedStage.DORMANT, SeedStage.CULLED)

    def germinate(self, module: nn.Module, blueprint: str, epoch: int, *, ramp_epochs: int = 3,
                  accuracy: float | None = None) -> None:
        """Plant `module` as a new seed; only an empty slot (dormant, or after a cull) accepts one."""
        if not self.can_germinate:
            raise IllegalTransition(f"cannot germinate into a slot whose seed is {self.stage.name}")
        lifecycle = SeedLifecycle(blueprint=blueprint, ramp_epochs=ramp_epochs,
                                  accuracy_at_germination=accuracy)
        lifecycle.transition(SeedStage.GERMINATED, epoch)
        self.lifecycle, self.seed = lifecycle, module

    def advance(self, epoch: int) -> None:
        """GERMINATED -> TRAINING or TRAINING -> BLENDING; anything else raises."""
        nxt = {SeedStage.GERMINATED: SeedStage.TRAINING, SeedStage.TRAINING: SeedStage.BLENDING}
        if self.stage not in nxt:
            raise IllegalTransition(f"ADVANCE is not allowed from {self.stage.name}; it moves GERMINATED -> "
                                    "TRAINING -> BLENDING (use FOSSILIZE from BLENDING)")
        self.lifecycle.transition(nxt[self.stage], epoch)

    def fossilize(self, epoch: int) -> None:
        self.lifecycle.transition(SeedStage.FOSSILIZED, epoch)

    def cull(self, epoch: int) -> nn.Module:
        """Remove the live seed and return it (so the caller can drop its optimizer state)."""
        self.lifecycle.transition(SeedStage.CULLED, epoch)
        seed, self.seed, self._isolated = self.seed, None, None
        return seed

    # ---- forward -----------------------------------------------------------------------------
    def blend(self, x: torch.Tensor, seed_out: torch.Tensor) -> torch.Tensor:
        """The slot output given the seed's output, for BLENDING and FOSSILIZED."""
        if self.stage == SeedStage.FOSSILIZED:
            return seed_out
        a = self.alpha
        return a * seed_out + (1.0 - a) * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage = self.stage
        if self.seed is None:
            return x
        if stage == SeedStage.TRAINING:
            if self.substitute:
                return self.seed(x)
            if self.training and torch.is_grad_enabled():
                self._isolated = self.seed(x.detach())
            return x
        if stage in (SeedStage.BLENDING, SeedStage.FOSSILIZED):
            return self.blend(x, self.seed(x))
        return x

    def frozen_output(self, x: torch.Tensor) -> torch.Tensor:
        """The slot's host-path output with its seed frozen (used downstream of an isolated seed)."""
        if self.seed is None or self.stage not in (SeedStage.BLENDING, SeedStage.FOSSILIZED):
            return x
        return self.blend(x, frozen_call(self.seed, x))

    def take_isolated_output(self) -> torch.Tensor | None:
        """The TRAINING seed's output from the last training forward, handed over once."""
        out, self._isolated = self._isolated, None
        return out


class HostCNN(nn.Module):
    """conv-BN-ReLU(-maxpool) x3 (3 -> 32 -> 64 -> 128 channels x width), global pooling, linear head.

    A block max-pools while its input is at least 8 pixels wide, so 32x32 CIFAR pools three times
    (as the reference host) and 8x8 digits pools once and keeps 4x4 maps for the seed slot.
    """

    SLOT_AFTER_BLOCK = {"slot1": 2, "slot0": 1, "slot2": 3}
    POOL_MIN_SIZE = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 slots: tuple[str, ...] = ("slot1",), input_size: int = 32, min_channels: int = 4) -> None:
        super().__init__()
        c1, c2, c3 = (max(min_channels, round(c * width)) for c in (32, 64, 128))
        self.conv1, self.bn1 = nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.conv3, self.bn3 = nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)
        self.channels = {1: c1, 2: c2, 3: c3}
        self.pools = self._pooling(input_size)
        for name in slots:
            self.add_module(name, SeedSlot(self.channels[self.SLOT_AFTER_BLOCK[name]]))
        self.slot_names = tuple(slots)

    def _pooling(self, size: int) -> tuple[bool, bool, bool]:
        pools = []
        for _ in range(3):
            pools.append(size >= self.POOL_MIN_SIZE)
            size = size // 2 if pools[-1] else size
        return tuple(pools)

    def _layers(self, block: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
        return getattr(self, f"conv{block}"), getattr(self, f"bn{block}")

    def _finish_block(self, block: int, h: torch.Tensor) -> torch.Tensor:
        h = F.relu(h)
        return F.max_pool2d(h, 2) if self.pools[block - 1] else h

    def _slots_after(self, block: int) -> list[SeedSlot]:
        return [getattr(self, n) for n in self.slot_names if self.SLOT_AFTER_BLOCK[n] == block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (1, 2, 3):
            conv, bn = self._layers(block)
            x = self._finish_block(block, bn(conv(x)))
            for slot in self._slots_after(block):
                x = slot(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def _frozen_tail(self, after_block: int, h: torch.Tensor) -> torch.Tensor:
        """The rest of the host after `after_block`, as a function of `h` only (nothing of it trains)."""
        for block in range(after_block + 1, 4):
            conv, bn = self._layers(block)
            h = self._finish_block(block, frozen_call(bn, frozen_call(conv, h)))
            for slot in self._slots_after(block):
                h = slot.frozen_output(h)
        return frozen_call(self.fc, torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def isolated_seed_loss(self, targets: torch.Tensor) -> torch.Tensor | None:
        """Classification loss of every TRAINING seed through the frozen rest of the host.

        Call once after each training forward; None when no seed is in TRAINING.
        """
        losses = []
        for name in self.slot_names:
            out = getattr(self, name).take_isolated_output()
            if out is not None:
                logits = self._frozen_tail(self.SLOT_AFTER_BLOCK[name], out)
                losses.append(F.cross_entropy(logits, targets))
        return torch.stack(losses).sum() if losses else None

    def seed_slots(self) -> dict[str, nn.Module | None]:
        """Slot name -> the seed module living there (None when empty); the tracker's seed protocol."""
        return {name: getattr(self, name).seed for name in self.slot_names}

    def slots(self) -> dict[str, SeedSlot]:
        return {name: getattr(self, name) for name in self.slot_names}

    def host_parameters(self) -> list[nn.Parameter]:
        """Parameters that belong to the host itself, in registration order (no seed parameters)."""
        seeds = {id(p) for seed in self.seed_slots().values() if seed is not None for p in seed.parameters()}
        return [p for p in self.parameters() if id(p) not in seeds]
