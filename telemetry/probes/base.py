"""The 27 base features (REFERENCE.md's v1 observation), positions 0-26 in every profile.

Fixes the original's mistakes: best_val_loss is tracked, history is indexed by lag so it cannot
misalign, and train loss/accuracy are means over every batch of the step, accumulated on device.
"""

from __future__ import annotations

import numpy as np
import torch

from telemetry.feature_schema import FeatureSpec
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if

PLATEAU_GAIN_POINTS = 0.5
BASE_HISTORY = 5


class BaseProbe(Probe):
    group = "base"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self._sums: torch.Tensor | None = None  # train loss sum, train correct, val loss sum, val correct
        self._n_train = 0
        self._n_val = 0
        self.val_losses: list[float | None] = []
        self.val_accuracies: list[float | None] = []
        self._plateau = 0
        self._best_acc: float | None = None
        self._best_loss: float | None = None

    def features(self) -> list[FeatureSpec]:
        s = self.spec
        lags = range(BASE_HISTORY - 1, -1, -1)
        return [
            s("epoch", "current epoch (decision steps so far)", "epoch", "int32"),
            s("global_step", "optimizer steps so far", "step", "int64"),
            s("train_loss", "mean training loss over every batch of the step", "nats"),
            s("val_loss", "mean validation loss", "nats"),
            s("loss_delta", "previous val_loss minus current (positive = improving)", "nats"),
            s("train_accuracy", "training accuracy over the step", "%"),
            s("val_accuracy", "validation accuracy", "%"),
            s("accuracy_delta", "current minus previous val_accuracy", "points"),
            s("plateau_epochs", f"consecutive epochs with val-accuracy gain < {PLATEAU_GAIN_POINTS} points",
              "epochs", "int32"),
            s("best_val_accuracy", "best val_accuracy so far", "%"),
            s("best_val_loss", "lowest val_loss so far", "nats"),
            *[s(f"val_loss_lag{k}", f"val_loss {k} epochs ago (null before the first epoch)", "nats")
              for k in lags],
            *[s(f"val_accuracy_lag{k}", f"val_accuracy {k} epochs ago (null before the first epoch)", "%")
              for k in lags],
            s("has_active_seed", "1 if a seed is live in a slot", "bool", "int32"),
            s("seed_stage", "lifecycle stage of the live seed (SeedStage)", "enum", "int32"),
            s("seed_epochs_in_stage", "epochs the live seed has spent in its stage", "epochs", "int32"),
            s("seed_alpha", "blending weight of the live seed", "fraction"),
            s("seed_improvement", "val_accuracy change since germination", "points"),
            s("available_slots", "free seed slots", "slots", "int32"),
        ]

    def _state(self, like: torch.Tensor) -> torch.Tensor:
        if self._sums is None:
            self._sums = torch.zeros(4, dtype=torch.float64, device=like.device)
        return self._sums

    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        sums = self._state(loss)
        n = targets.shape[0]
        sums[0] += loss.detach().double() * n
        sums[1] += (logits.detach().argmax(1) == targets).sum()
        self._n_train += n

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        sums = self._state(losses)
        sums[2] += losses.double().sum()
        sums[3] += (logits.argmax(1) == targets).sum()
        self._n_val += targets.shape[0]

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        return [self._sums if self._sums is not None else torch.zeros(4, dtype=torch.float64)]

    def finish(self, host: np.ndarray, info: StepInfo) -> list[Value]:
        nt, nv = self._n_train, self._n_val
        train_loss = none_if(nt == 0, host[0] / max(nt, 1))
        train_acc = none_if(nt == 0, 100.0 * host[1] / max(nt, 1))
        val_loss = none_if(nv == 0, host[2] / max(nv, 1))
        val_acc = none_if(nv == 0, 100.0 * host[3] / max(nv, 1))
        prev_loss = self.val_losses[-1] if self.val_losses else None
        prev_acc = self.val_accuracies[-1] if self.val_accuracies else None
        self.val_losses.append(val_loss)
        self.val_accuracies.append(val_acc)
        self._update_plateau(prev_acc, val_acc)
        self._update_bests(val_loss, val_acc)
        info.values.update(val_loss=val_loss, val_accuracy=val_acc, train_loss=train_loss)
        seed = info.seed
        return [
            info.epoch,
            info.global_step,
            train_loss,
            val_loss,
            _diff(prev_loss, val_loss),
            train_acc,
            val_acc,
            _diff(val_acc, prev_acc),
            self._plateau,
            self._best_acc,
            self._best_loss,
            *lagged(self.val_losses, range(BASE_HISTORY - 1, -1, -1)),
            *lagged(self.val_accuracies, range(BASE_HISTORY - 1, -1, -1)),
            int(seed.has_active_seed),
            int(seed.stage),
            int(seed.epochs_in_stage),
            float(seed.alpha),
            float(seed.improvement),
            int(seed.available_slots),
        ]

    def _update_plateau(self, prev_acc: float | None, acc: float | None) -> None:
        if prev_acc is None or acc is None:
            return
        self._plateau = self._plateau + 1 if acc - prev_acc < PLATEAU_GAIN_POINTS else 0

    def _update_bests(self, loss: float | None, acc: float | None) -> None:
        if acc is not None and acc == acc and (self._best_acc is None or acc > self._best_acc):
            self._best_acc = acc
        if loss is not None and loss == loss and (self._best_loss is None or loss < self._best_loss):
            self._best_loss = loss

    def reset(self) -> None:
        if self._sums is not None:
            self._sums.zero_()
        self._n_train = 0
        self._n_val = 0


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def lagged(history: list[float | None], lags: range) -> list[float | None]:
    """History values by lag (0 = this step); null where the run is younger than the lag."""
    return [history[-1 - k] if k < len(history) else None for k in lags]
