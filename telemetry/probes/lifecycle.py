"""The lifecycle group: what a rule-based policy knows about the seed beyond the base block.

The heuristic reads the seed-path gain (the only evidence of a TRAINING seed's worth before it
blends), the live seed's blueprint and which blueprints were tried; a learned policy must see the
same, so this group is in every profile, right after the 27 base features (positions 27 on). The
environment that owns the seeds reports the values through `SeedStatus`; a plain training loop with
no seeds gets nulls and zeros.

- `seed_path_accuracy`, `seed_path_gain`: decision-validation accuracy with the TRAINING seed's
  output in place of the slot's, and that minus the host's (null unless a seed is TRAINING);
  `seed_path_valid` says whether they were measured (nulls read as 0 in tensors);
- `isolated_seed_loss`: the TRAINING seed's mean loss through the frozen rest of the host;
- `live_blueprint_<b>`: one-hot of the live or fossilized seed's blueprint (all 0 without one);
- `tried_<b>`: 1 once blueprint b was germinated in this episode, culled or not;
- `seed_param_share`, `param_epochs`: the seed's parameters as a share of the host's, and their sum
  over the epochs so far (the primary score's cost term, before its factor).
"""

from __future__ import annotations

import numpy as np

from telemetry.feature_schema import FeatureSpec
from telemetry.probes.probe import Probe, ProbeContext, StepInfo, Value, none_if


class LifecycleProbe(Probe):
    group = "lifecycle"

    def __init__(self, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.blueprints = list(ctx.config.lifecycle.blueprints)

    def features(self) -> list[FeatureSpec]:
        s = self.spec
        return [
            s("seed_path_accuracy", "val accuracy with the TRAINING seed's output in place of the slot's", "%"),
            s("seed_path_gain", "seed_path_accuracy minus val_accuracy", "points"),
            s("seed_path_valid", "1 if the seed path was measured this step (a seed is TRAINING)", "bool", "int32"),
            s("isolated_seed_loss", "mean loss of the TRAINING seed through the frozen rest of the host", "nats"),
            *[s(f"live_blueprint_{b}", f"1 if the live or fossilized seed is a {b} seed", "bool", "int32")
              for b in self.blueprints],
            *[s(f"tried_{b}", f"1 once a {b} seed was germinated in this run", "bool", "int32")
              for b in self.blueprints],
            s("seed_param_share", "parameters of the seed as a share of the host's", "fraction"),
            s("param_epochs", "sum over the epochs so far of seed_param_share", "epochs"),
        ]

    def finish(self, host: np.ndarray, info: StepInfo) -> dict[str, Value]:
        seed = info.seed
        path = seed.seed_path_accuracy
        measured = path is not None and seed.val_accuracy is not None
        row: dict[str, Value] = {
            "seed_path_accuracy": none_if(path is None, path or 0.0),
            "seed_path_gain": none_if(not measured, (path or 0.0) - (seed.val_accuracy or 0.0)),
            "seed_path_valid": int(measured),
            "isolated_seed_loss": none_if(seed.isolated_seed_loss is None, seed.isolated_seed_loss or 0.0),
        }
        row.update({f"live_blueprint_{b}": int(seed.blueprint == b) for b in self.blueprints})
        row.update({f"tried_{b}": int(b in seed.tried) for b in self.blueprints})
        row.update(seed_param_share=float(seed.param_share), param_epochs=float(seed.param_epochs))
        return row
