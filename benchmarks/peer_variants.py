"""The variants benchmarks/peers.py times: untracked, esper's profiles, Cockpit, wandb.watch, torch-surgeon.

Each variant trains its own copy of the host (same initial weights, same batches) the way its tool's
documentation says to, and reports what it records: how many values, and how often. A peer's import
happens when its variant is built, so a missing peer fails there (and is reported by peers.py).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from numbers import Number

import numpy as np
import torch
import torch.nn.functional as F
from hosts import Host
from torch import nn

from telemetry import DiagnosticTracker, load_config

WANDB_HISTOGRAM_BINS = 64  # wandb.watch's default


class Variant:
    """One model trained under one tool; subclasses hook the tool in."""

    def __init__(self, host: Host, device: torch.device) -> None:
        self.model = host.build().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()

    def validate(self, val: list) -> None:
        for x, y in val:
            F.cross_entropy(self.model(x), y)

    def recorded(self, batches: int) -> dict[str, object]:
        return {"values": 0, "every": "-"}

    def close(self) -> None:
        pass


class Esper(Variant):
    def __init__(self, host: Host, device: torch.device, profile: str) -> None:
        super().__init__(host, device)
        config = load_config(profile, overrides=host.overrides.get(profile, []))
        self.tracker = DiagnosticTracker(self.model, config, host.num_classes)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.tracker.train_batch(loss, logits, y)
        self.opt.step()

    def validate(self, val: list) -> None:
        with self.tracker.validating():
            for x, y in val:
                self.tracker.val_batch(self.model(x), y, inputs=x)
        self.tracker.end_step()

    def recorded(self, batches: int) -> dict[str, object]:
        return {"values": len(self.tracker.schema), "every": "epoch (aggregating every batch)"}

    def close(self) -> None:
        self.tracker.close()


class CockpitVariant(Variant):
    """Cockpit's documented loop: BackPACK-extended model and loss, the step inside `cockpit(...)`."""

    def __init__(self, host: Host, device: torch.device, configuration: str) -> None:
        from backpack import extend
        from cockpit import Cockpit
        from cockpit.utils.configuration import configuration as quantities

        super().__init__(host, device)
        self.model = extend(self.model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss = extend(nn.CrossEntropyLoss())
        self.cockpit = Cockpit(self.model.parameters(), quantities=quantities(configuration))
        self.step = 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.loss(logits, y)
        losses = F.cross_entropy(logits, y, reduction="none")
        info = {"batch_size": x.shape[0], "individual_losses": losses, "loss": loss, "optimizer": self.opt}
        with self.cockpit(self.step, info=info):
            loss.backward(create_graph=self.cockpit.create_graph(self.step))
        self.opt.step()
        self.step += 1

    def recorded(self, batches: int) -> dict[str, object]:
        output = self.cockpit.get_output()
        steps = {s for per_step in output.values() for s in per_step}
        total = sum(_count(v) for per_step in output.values() for v in per_step.values())
        return {"values": round(total / max(len(steps), 1)), "every": "optimizer step (mean)"}


class WandbWatch(Variant):
    """`wandb.watch(model, log="all", log_freq=1)`, offline, and the loss logged every step."""

    def __init__(self, host: Host, device: torch.device, workdir: str) -> None:
        import wandb

        super().__init__(host, device)
        self.wandb = wandb
        self.run = wandb.init(project="esper-peers", dir=workdir, mode="offline")
        wandb.watch(self.model, log="all", log_freq=1)
        self.tensors = sum(1 for p in self.model.parameters() if p.requires_grad)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.run.log({"loss": float(loss)})

    def recorded(self, batches: int) -> dict[str, object]:
        # a histogram of every parameter and of its gradient, plus the loss
        return {"values": 2 * self.tensors * WANDB_HISTOGRAM_BINS + 1, "every": "optimizer step"}

    def close(self) -> None:
        self.run.finish()


class SurgeonVariant(Variant):
    """torch-surgeon's Surgeon, default rules (printing off): hooks on every leaf module."""

    def __init__(self, host: Host, device: torch.device) -> None:
        from torch_surgeon import Surgeon

        super().__init__(host, device)
        with contextlib.redirect_stdout(io.StringIO()):
            self.surgeon = Surgeon(self.model, rules={"verbose": False}).attach()

    def recorded(self, batches: int) -> dict[str, object]:
        stats = self.surgeon.report()
        return {"values": sum(_count(v) for layer in stats.values() for v in layer.values()),
                "every": "optimizer step"}

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.surgeon.detach()


def _count(value: object) -> int:
    """Numbers in a logged value (a number, an array, or nested lists/dicts of them)."""
    if isinstance(value, bool | Number):
        return 1
    if isinstance(value, np.ndarray | torch.Tensor):
        return int(value.size if isinstance(value, np.ndarray) else value.numel())
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_count(v) for v in value)
    return 0


PEERS: dict[str, Callable[[Host, torch.device, str], Variant]] = {
    "untracked": lambda h, d, w: Variant(h, d),
    "untracked_control": lambda h, d, w: Variant(h, d),
    "esper_standard": lambda h, d, w: Esper(h, d, "standard"),
    "esper_diagnostic": lambda h, d, w: Esper(h, d, "diagnostic"),
    "esper_research": lambda h, d, w: Esper(h, d, "research"),
    "cockpit_economy": lambda h, d, w: CockpitVariant(h, d, "economy"),
    "cockpit_business": lambda h, d, w: CockpitVariant(h, d, "business"),
    "wandb_all": lambda h, d, w: WandbWatch(h, d, w),
    "torch_surgeon": lambda h, d, w: SurgeonVariant(h, d),
}
