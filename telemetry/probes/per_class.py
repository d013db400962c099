"""Per-class validation accuracy and loss (and the confusion matrix), vectorised with index_add_.

The original looped over every validation sample in Python; here each validation batch costs three
scatter-add kernels on the device and nothing reaches the host until the step ends.
"""

from __future__ import annotations

import numpy as np
import torch

from telemetry.feature_schema import FeatureSpec
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if


class PerClassProbe(Probe):
    group = "per_class"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.cfg = ctx.config.per_class
        self.c = ctx.num_classes
        c = self.c
        # per class: count, correct, loss sum, then the c x c confusion counts
        self.add_state("counts", torch.zeros(3 * c + c * c, dtype=torch.float64))

    def features(self) -> list[FeatureSpec]:
        s, cfg, c = self.spec, self.cfg, self.c
        out = []
        if cfg.track_accuracy:
            out += [s(f"val_acc_class_{k}", f"validation accuracy on class {k}", "%") for k in range(c)]
            out.append(s("val_acc_class_std", "std of per-class validation accuracy (imbalance)", "points"))
        if cfg.track_loss:
            out += [s(f"val_loss_class_{k}", f"mean validation loss on class {k}", "nats") for k in range(c)]
        if cfg.track_confusion:
            out += [s(f"confusion_{t}_{p}", f"share of class {t} predicted as {p}", "fraction")
                    for t in range(c) for p in range(c)]
        return out

    def val_batch(self, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        c = self.c
        pred = logits.argmax(1)
        t = targets.long()
        # index_add_, not bincount: bincount reads the largest index back to the host (a sync on CUDA).
        # Targets outside the classes (cross-entropy's ignore_index, -100) count in no class.
        inside = (t >= 0) & (t < c)
        t = t.clamp(0, c - 1)
        weight = inside.double()
        self.counts[:c].index_add_(0, t, weight)
        self.counts[c: 2 * c].index_add_(0, t, (pred == t).double() * weight)
        self.counts[2 * c: 3 * c].index_add_(0, t, torch.where(inside, losses.double(), 0.0))
        if self.cfg.track_confusion:
            self.counts[3 * c:].index_add_(0, t * c + pred.clamp(max=c - 1), (inside & (pred < c)).double())

    def payload(self, probe_batch: object) -> list[torch.Tensor]:
        return [self.counts]

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        c, cfg = self.c, self.cfg
        n, correct, loss = host[:c], host[c: 2 * c], host[2 * c: 3 * c]
        out: dict[str, Value] = {}
        if cfg.track_accuracy:
            acc = [none_if(n[k] == 0, 100.0 * correct[k] / max(n[k], 1)) for k in range(c)]
            seen = [a for a in acc if a is not None]
            out.update({f"val_acc_class_{k}": a for k, a in enumerate(acc)})
            out["val_acc_class_std"] = float(np.std(seen)) if seen else None
        if cfg.track_loss:
            out.update({f"val_loss_class_{k}": none_if(n[k] == 0, loss[k] / max(n[k], 1)) for k in range(c)})
        if cfg.track_confusion:
            conf = host[3 * c:].reshape(c, c)
            out.update({f"confusion_{t}_{p}": none_if(n[t] == 0, conf[t, p] / max(n[t], 1))
                        for t in range(c) for p in range(c)})
        return out
