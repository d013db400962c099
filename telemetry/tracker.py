"""DiagnosticTracker: one feature row per decision step, from any PyTorch training loop.

The tracker owns the probes of the active profile (plus any user probes). During the step it only
launches device work; `end_step` gathers every probe's device tensors into one buffer and brings it
to the host with a single transfer, then lets each probe turn its slice into named row values. That
is the whole overhead budget: no `.item()` per statistic, per layer or per batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.errors import SchemaError
from telemetry.feature_schema import FeatureSchema
from telemetry.probes import ProbeFactory, build_probes
from telemetry.probes.probe import StepInfo, _copy
from telemetry.seed_status import SeedStatus


class DiagnosticTracker:
    """Per-step training diagnostics for a model, as one row of named features per decision step.

    Args:
        model: the network being trained. Profiles name its modules (e.g. `conv1`); a model with a
            `seed_slots()` method (slot name -> module or None) gets the fixed `seed` feature group.
        config: a resolved profile, e.g. `load_config("diagnostic")`.
        num_classes: classes of the classification task (sizes the per-class features).
        rng_seed: seeds every random choice the probes make (gradient samples, perturbations).
        probes: user probe classes (`Probe` subclasses, or factories taking a `ProbeContext`), whose
            features follow the built-in groups in the schema.

    Example:

        tracker = DiagnosticTracker(model, load_config("diagnostic"), num_classes=10)
        for epoch in range(epochs):
            for x, y in train_loader:
                opt.zero_grad(); logits = model(x); loss = F.cross_entropy(logits, y); loss.backward()
                tracker.train_batch(loss, logits, y)      # after backward, before zero_grad
                opt.step()
            with torch.no_grad(), tracker.validating():
                for x, y in val_loader:
                    tracker.val_batch(model(x), y, inputs=x)
            row = tracker.end_step()                      # {feature name: value}, in schema order
        tracker.close()

    `state_dict()` / `load_state_dict()` copy and restore the whole run state (every probe's
    declared state and the step counters), which is how a run is branched and rewound.
    """

    def __init__(self, model: nn.Module, config: TelemetryConfig, num_classes: int, *, rng_seed: int = 0,
                 probes: Sequence[ProbeFactory] = ()) -> None:
        self.model = model
        self.config = config
        self.probes = build_probes(config, model, num_classes, rng_seed=rng_seed, extra=probes)
        self._names = [[spec.name for spec in p.features()] for p in self.probes]
        self.schema = FeatureSchema(tuple(spec for p in self.probes for spec in p.features()))
        self._ctx = self.probes[0].ctx
        self._device = torch.device("cpu")
        self._batch = 0
        self._global_step = 0
        self._epoch = 0
        self._probe_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._closed = False
        for probe in self.probes:
            probe.attach()

    # ---- during the step ---------------------------------------------------------------------
    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Record one optimizer step's batch. Call after `loss.backward()`, while gradients exist.

        Probes receive the loss detached (once, here), so nothing they keep holds the graph alive."""
        self._follow(loss.device)
        loss = loss.detach()
        for probe in self.probes:
            probe.train_batch(loss, logits, targets, self._batch)
        self._batch += 1
        self._global_step += 1

    @contextmanager
    def validating(self) -> Iterator[None]:
        """Forward hooks (activation statistics) record only inside this block: the validation pass."""
        with self._phase(True):
            yield

    @contextmanager
    def _phase(self, validating: bool) -> Iterator[None]:
        before, self._ctx.validating = self._ctx.validating, validating
        try:
            yield
        finally:
            self._ctx.validating = before

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor,
                  inputs: torch.Tensor | None = None) -> None:
        """Record one validation batch; the first `inputs` seen become the fixed sharpness probe batch."""
        self._follow(logits.device)
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

    def _follow(self, device: torch.device) -> None:
        """Keep the probes' state on the device the training runs on (a Python comparison per batch)."""
        if device != self._device:
            for probe in self.probes:
                probe.to(device)
            self._device = device

    # ---- end of the step ---------------------------------------------------------------------
    def end_step(self, *, epoch: int | None = None, seed: SeedStatus | None = None) -> dict[str, Any]:
        """Close the decision step: one device-to-host transfer, then the row, in schema order."""
        info = StepInfo(epoch=self._epoch if epoch is None else epoch, global_step=self._global_step,
                        seed=seed or SeedStatus(available_slots=self._free_slots()))
        with self._phase(False):  # the sharpness probe's forwards are not validation
            host = self._transfer([p.payload(self._probe_batch) for p in self.probes])
        values: dict[str, Any] = {}
        for probe, names, part in zip(self.probes, self._names, host, strict=True):
            found = probe.finish(part, info)
            if found.keys() != set(names):
                odd = sorted(set(found) ^ set(names))[:5]
                raise SchemaError(f"probe {probe.group!r}: finish() and features() disagree on {odd}")
            values.update(found)
            probe.reset()
        self._batch = 0
        self._epoch += 1
        return {name: values[name] for name in self.schema.names}

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

    # ---- run state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A value copy of the run state: step counters, the probe batch, every probe's state."""
        return {"batch": self._batch, "global_step": self._global_step, "epoch": self._epoch,
                "probe_batch": _copy(self._probe_batch),
                "probes": {p.group: p.state_dict() for p in self.probes}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` into this tracker (the same state can be loaded any number of times)."""
        if set(state["probes"]) != {p.group for p in self.probes}:
            raise ValueError(f"tracker state holds probes {sorted(state['probes'])}, this tracker has "
                             f"{sorted(p.group for p in self.probes)}")
        self._batch, self._global_step, self._epoch = state["batch"], state["global_step"], state["epoch"]
        self._probe_batch = _copy(state["probe_batch"])
        for probe in self.probes:
            probe.load_state_dict(state["probes"][probe.group])
            probe.to(self._device)

    # ---- closing -----------------------------------------------------------------------------
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
