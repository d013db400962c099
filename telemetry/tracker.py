"""DiagnosticTracker: one feature row per decision step, from any PyTorch training loop.

The tracker owns the probes of the active profile. During the step it only launches device work;
`end_step` gathers every probe's device tensors into one buffer and brings it to the host with a
single transfer, then lets each probe turn its slice into row values. That is the whole overhead
budget: no `.item()` per statistic, per layer or per batch.

    tracker = DiagnosticTracker(model, load_config("diagnostic"), num_classes=10)
    for epoch in range(epochs):
        for x, y in train_loader:
            opt.zero_grad(); logits = model(x); loss = F.cross_entropy(logits, y); loss.backward()
            tracker.train_batch(loss, logits, y)      # after backward, before zero_grad
            opt.step()
        with torch.no_grad(), tracker.validating():
            for x, y in val_loader:
                tracker.val_batch(model(x), y, inputs=x)
        row = tracker.end_step()                      # {feature name: value}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.feature_schema import FeatureSchema
from telemetry.probes import build_probes
from telemetry.probes.activations import ActivationProbe
from telemetry.probes.probe import StepInfo
from telemetry.seed_status import SeedStatus


class DiagnosticTracker:
    def __init__(self, model: nn.Module, config: TelemetryConfig, num_classes: int, *, seed: int = 0) -> None:
        self.model = model
        self.config = config
        self.probes = build_probes(config, model, num_classes, seed=seed)
        self.schema = FeatureSchema(tuple(spec for p in self.probes for spec in p.features()))
        self._widths = [len(p.features()) for p in self.probes]
        self._batch = 0
        self._global_step = 0
        self._epoch = 0
        self._probe_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._closed = False
        for probe in self.probes:
            probe.attach()

    # ---- during the step ---------------------------------------------------------------------
    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Record one optimizer step's batch. Call after `loss.backward()`, while gradients exist."""
        for probe in self.probes:
            probe.train_batch(loss, logits, targets, self._batch)
        self._batch += 1
        self._global_step += 1

    @contextmanager
    def validating(self) -> Iterator[None]:
        """Activation hooks record only inside this block (the validation pass)."""
        with self._activation_capture(True):
            yield

    @contextmanager
    def _activation_capture(self, active: bool) -> Iterator[None]:
        acts = [p for p in self.probes if isinstance(p, ActivationProbe)]
        before = [p.active for p in acts]
        for p in acts:
            p.active = active
        try:
            yield
        finally:
            for p, was in zip(acts, before, strict=True):
                p.active = was

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor,
                  inputs: torch.Tensor | None = None) -> None:
        """Record one validation batch; the first `inputs` seen become the fixed sharpness probe batch."""
        logits = logits.detach()
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        for probe in self.probes:
            probe.val_batch(logits, targets, losses)
        if inputs is not None and self._probe_batch is None:
            self.set_probe_batch(inputs, targets)

    def set_probe_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Fix the batch the loss-landscape probe measures on, for the rest of the run."""
        n = self.config.loss_landscape.probe_batch_size
        self._probe_batch = (inputs[:n].detach().clone(), targets[:n].detach().clone())

    # ---- end of the step ---------------------------------------------------------------------
    def end_step(self, *, epoch: int | None = None, seed: SeedStatus | None = None) -> dict[str, Any]:
        """Close the decision step: one device-to-host transfer, then the row, in schema order."""
        info = StepInfo(epoch=self._epoch if epoch is None else epoch, global_step=self._global_step,
                        seed=seed or SeedStatus(available_slots=self._free_slots()))
        with self._activation_capture(False):  # the sharpness probe's forwards are not validation
            host = self._transfer([p.payload(self._probe_batch) for p in self.probes])
        values: list[Any] = []
        for probe, part in zip(self.probes, host, strict=True):
            values.extend(probe.finish(part, info))
            probe.reset()
        self._batch = 0
        self._epoch += 1
        return dict(zip(self.schema.names, values, strict=True))

    def _transfer(self, payloads: list[list[torch.Tensor]]) -> list[np.ndarray]:
        """Concatenate all probes' tensors on one device, copy once, and split per probe."""
        flat = [t.reshape(-1) for part in payloads for t in part]
        device = next((t.device for t in flat if t.device.type != "cpu"), torch.device("cpu"))
        joined = (torch.cat([t.to(device=device, dtype=torch.float64) for t in flat]) if flat
                  else torch.zeros(0))
        host = joined.to("cpu").numpy()
        sizes = [sum(t.numel() for t in part) for part in payloads]
        return np.split(host, np.cumsum(sizes)[:-1])

    def _free_slots(self) -> int:
        slots = getattr(self.model, "seed_slots", None)
        return sum(m is None for m in slots().values()) if callable(slots) else 0

    def close(self) -> None:
        """Remove every hook the tracker added; the model is left as it was found."""
        if not self._closed:
            for probe in self.probes:
                probe.close()
            self._closed = True

    def __enter__(self) -> DiagnosticTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
