"""History extension: val loss and accuracy beyond the base block's five epochs.

Named by lag, so `val_loss_lag7` is the same quantity in every profile whose history reaches it;
the base block's lags 0-4 never move.
"""

from __future__ import annotations

import numpy as np

from telemetry.feature_schema import FeatureSpec
from telemetry.probes.base import BASE_HISTORY, BaseProbe, lagged
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value


class HistoryProbe(Probe):
    group = "history"

    def __init__(self, ctx: ProbeContext, base: BaseProbe) -> None:
        super().__init__(ctx)
        self.base = base
        self.lags = range(ctx.config.history_length - 1, BASE_HISTORY - 1, -1)

    def features(self) -> list[FeatureSpec]:
        s = self.spec
        return [s(f"val_loss_lag{k}", f"val_loss {k} epochs ago (null before the first epoch)", "nats")
                for k in self.lags] + [
            s(f"val_accuracy_lag{k}", f"val_accuracy {k} epochs ago (null before the first epoch)", "%")
            for k in self.lags
        ]

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        """Reads the base probe's history, which its `finish` (earlier in the registry) has extended."""
        losses = lagged(self.base.val_losses, self.lags)
        accuracies = lagged(self.base.val_accuracies, self.lags)
        return {**{f"val_loss_lag{k}": v for k, v in zip(self.lags, losses, strict=True)},
                **{f"val_accuracy_lag{k}": v for k, v in zip(self.lags, accuracies, strict=True)}}
