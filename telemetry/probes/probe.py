"""The probe: one feature group, its declared features, its declared state, and its device work.

Shaped like torchmetrics' `Metric`. A probe registers its state up front (`add_state`), so reset,
copying (`state_dict` / `load_state_dict`, what branching a run uses) and moving (`to`) are generic.
Hot-path hooks (`train_batch`, `val_batch`) only launch device work; `payload` hands device tensors
to the tracker, which concatenates every probe's payload and brings it to the host in one transfer
per decision step; `finish` turns the host values into the probe's slice of the row, by name.
Probes never call `.item()` or branch on device values.

A user probe is a subclass passed to `DiagnosticTracker(..., probes=[MyProbe])`:

    class LossScale(Probe):
        group = "loss_scale"

        def __init__(self, ctx: ProbeContext) -> None:
            super().__init__(ctx)
            self.add_state("peak", torch.zeros((), dtype=torch.float64))  # reset every step

        def features(self) -> list[FeatureSpec]:
            return [self.spec("loss_peak", "largest training loss of the step", "nats")]

        def train_batch(self, loss, logits, targets, batch):
            self.peak = torch.maximum(self.peak, loss.detach().double())

        def payload(self, probe_batch):
            return [self.peak]

        def finish(self, host, info):
            return {"loss_peak": float(host[0])}
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from telemetry.config import TelemetryConfig
from telemetry.feature_schema import FeatureSpec
from telemetry.seed_status import SeedStatus

Value = float | int | None


@dataclass
class ProbeContext:
    """What every probe may know about the run, fixed when the schema is built.

    `validating` is set by the tracker while the validation pass runs (`tracker.validating()`), so
    probes with forward hooks record the validation pass only. `rng_seed` seeds every random
    choice a probe makes (samples, perturbations), never the global generators.
    """

    config: TelemetryConfig
    model: nn.Module
    layers: list[tuple[str, nn.Module]]
    num_classes: int
    slots: list[str]
    rng_seed: int = 0
    validating: bool = field(default=False, compare=False)


@dataclass
class StepInfo:
    """Per-step facts the environment (or the tracker) reports, shared by every probe's `finish`."""

    epoch: int
    global_step: int
    seed: SeedStatus


@dataclass(frozen=True)
class _State:
    default: Any
    per_step: bool


class Probe:
    """One feature group. Subclasses set `group`, declare state in `__init__` and implement
    `features` and `finish` (and whichever of `train_batch`, `val_batch`, `payload`, `attach`,
    `close` they need).

    Args:
        ctx: the run's `ProbeContext` (config, model, resolved layers, classes, seed slots).

    State declared with `add_state(name, default, per_step=True)` is an attribute; `reset()`
    restores per-step state to its default after every decision step, while run state
    (`per_step=False`: histories, bests, random generators) persists. Defaults may be tensors,
    numbers, lists, None (allocated on first use), or torch/numpy generators.
    """

    group: ClassVar[str] = ""

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self._states: dict[str, _State] = {}

    # ---- declared state ----------------------------------------------------------------------
    def add_state(self, name: str, default: Any, *, per_step: bool = True) -> None:
        """Register a state attribute and set it to (a copy of) its default."""
        if name in self._states or hasattr(type(self), name):
            raise ValueError(f"{type(self).__name__}: state {name!r} is declared twice or shadows an attribute")
        self._states[name] = _State(_copy(default), per_step)
        setattr(self, name, _copy(default))

    def reset(self) -> None:
        """Per-step state back to its defaults (the tracker calls this after every decision step)."""
        for name, state in self._states.items():
            if state.per_step:
                setattr(self, name, _copy(state.default))

    def state_dict(self) -> dict[str, Any]:
        """A value copy of every declared state, per-step and run state alike."""
        return {name: _copy(getattr(self, name)) for name in self._states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a `state_dict()` back (copied, so the same state can be loaded again)."""
        if set(state) != set(self._states):
            missing, unexpected = sorted(set(self._states) - set(state)), sorted(set(state) - set(self._states))
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            setattr(self, name, _copy(value))

    def to(self, device: torch.device | str) -> Probe:
        """Move every tensor and generator of the state (and of the defaults) to `device`."""
        device = torch.device(device)
        for name, state in self._states.items():
            self._states[name] = _State(_moved(state.default, device), state.per_step)
            setattr(self, name, _moved(getattr(self, name), device))
        return self

    # ---- declaration and hooks ---------------------------------------------------------------
    def features(self) -> list[FeatureSpec]:
        raise NotImplementedError

    def spec(self, name: str, description: str, unit: str = "", dtype: str = "float32") -> FeatureSpec:
        return FeatureSpec(name=name, group=self.group, dtype=dtype, unit=unit, description=description)

    def attach(self) -> None:
        """Install hooks; called once by the tracker."""

    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        """After backward: gradients are populated, `loss` is detached. Device work only."""

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        """During validation: per-sample `losses` already computed by the tracker."""

    def payload(self, probe_batch: tuple[torch.Tensor, torch.Tensor] | None) -> list[torch.Tensor]:
        """Device tensors this probe needs on the host for the step (concatenated by the tracker)."""
        return []

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        """{feature name: value} for every feature of `features()`, from this probe's slice of the
        transferred payload (the tracker checks the names)."""
        raise NotImplementedError

    def close(self) -> None:
        """Remove every hook this probe added."""


def none_if(missing: bool, value: float) -> float | None:
    """Null marks 'not measured this step' (no batches, no seed); NaN/Inf from training stay as is."""
    return None if missing else float(value)


def _copy(value: Any) -> Any:
    """A value copy that shares no storage: tensors cloned, generators re-seeded to the same state."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        twin = torch.Generator(device=value.device)
        twin.set_state(value.get_state())
        return twin
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return copy.deepcopy(value)  # numbers, None, numpy generators and arrays


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, torch.Generator):
        if value.device == device:
            return value
        moved = torch.Generator(device=device)
        moved.manual_seed(value.initial_seed())
        return moved
    if isinstance(value, list):
        return [_moved(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value
