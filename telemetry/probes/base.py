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
FOLD_EVERY = 1024  # per-batch training values are summed at the step's end, or this often
BASE_HISTORY = 5


class BaseProbe(Probe):
    group = "base"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        # per step: train loss sum, train correct, val loss sum, val correct (device); batch sizes (host);
        # training batches not yet summed: their losses and correct counts (device), sizes (host)
        self.add_state("sums", torch.zeros(4, dtype=torch.float64))
        self.add_state("pending", [])
        self.add_state("pending_sizes", [])
        self.add_state("n_train", 0)
        self.add_state("n_val", 0)
        # the run's history
        self.add_state("val_losses", [], per_step=False)
        self.add_state("val_accuracies", [], per_step=False)
        self.add_state("plateau", 0, per_step=False)
        self.add_state("best_acc", None, per_step=False)
        self.add_state("best_loss", None, per_step=False)

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

    def train_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    batch: int) -> None:
        # two small vectors kept per batch and summed at the step's end: 3 kernels per batch, not 10
        n = targets.shape[0]
        self.pending.append((loss, (logits.argmax(1) == targets).sum()))
        self.pending_sizes.append(n)
        self.n_train += n
        if len(self.pending) >= FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for loss, _ in self.pending]).double()
        sizes = torch.tensor(self.pending_sizes, dtype=torch.float64).to(losses.device)
        self.sums[:2] += torch.stack([(losses * sizes).sum(), torch.stack([c for _, c in self.pending]).sum()])
        self.pending, self.pending_sizes = [], []

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        self.sums[2] += losses.double().sum()
        self.sums[3] += (logits.argmax(1) == targets).sum()
        self.n_val += targets.shape[0]

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        self._fold()
        return [self.sums]

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        nt, nv = self.n_train, self.n_val
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
        lags = range(BASE_HISTORY - 1, -1, -1)
        seed = info.seed
        return {
            "epoch": info.epoch,
            "global_step": info.global_step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "loss_delta": _diff(prev_loss, val_loss),
            "train_accuracy": train_acc,
            "val_accuracy": val_acc,
            "accuracy_delta": _diff(val_acc, prev_acc),
            "plateau_epochs": self.plateau,
            "best_val_accuracy": self.best_acc,
            "best_val_loss": self.best_loss,
            **dict(zip([f"val_loss_lag{k}" for k in lags], lagged(self.val_losses, lags), strict=True)),
            **dict(zip([f"val_accuracy_lag{k}" for k in lags], lagged(self.val_accuracies, lags), strict=True)),
            "has_active_seed": int(seed.has_active_seed),
            "seed_stage": int(seed.stage),
            "seed_epochs_in_stage": int(seed.epochs_in_stage),
            "seed_alpha": float(seed.alpha),
            "seed_improvement": float(seed.improvement),
            "available_slots": int(seed.available_slots),
        }

    def _update_plateau(self, prev_acc: float | None, acc: float | None) -> None:
        if prev_acc is None or acc is None:
            return
        self.plateau = self.plateau + 1 if acc - prev_acc < PLATEAU_GAIN_POINTS else 0

    def _update_bests(self, loss: float | None, acc: float | None) -> None:
        if acc is not None and acc == acc and (self.best_acc is None or acc > self.best_acc):
            self.best_acc = acc
        if loss is not None and loss == loss and (self.best_loss is None or loss < self.best_loss):
            self.best_loss = loss


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def lagged(history: list[float | None], lags: range) -> list[float | None]:
    """History values by lag (0 = this step); null where the run is younger than the lag."""
    return [history[-1 - k] if k < len(history) else None for k in lags]
