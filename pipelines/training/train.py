"""Policy training from a pack: imitate the behaviour policy, or learn the counterfactual oracle.

    result = train_policy(open_pack("runs/pack"), features="minimal", target="oracle", rng_seed=0)
    result.policy.save("runs/policy-minimal")

Data comes through the pack reader: features selected by name (a profile name slices a larger pack
to exactly that profile's features), standardised with the train split's quick stats, split by
episode as the pack assigned them. Targets:

- `heuristic`: the action the behaviour policy took at every step (imitation);
- `oracle`: the step's `best_action` from counterfactual rollouts, on the branched steps only.

Invalid actions are masked out of the logits. WAIT dominates both targets, so the loss is weighted
by inverse class frequency in the train split, and model selection uses the weighted validation loss
(early stopping with patience); the reported scores are balanced accuracy, per-action recall and the
confusion matrix on the val and test splits. Same options and seed give the same policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.policies.learned_policy import (
    MAX_LAYERS,
    MAX_PARAMETERS,
    LearnedPolicy,
    PolicyNet,
    network_parameters,
    prepare,
)
from pipelines.training.metrics import ClassificationReport, classification_report
from telemetry import EsperError
from telemetry.packs import MANIFEST_NAME, NO_ACTION, Pack, file_sha256

TARGETS = {"heuristic": "action", "oracle": "best_action"}
SPLITS = ("train", "val", "test")


class TrainError(EsperError):
    """Training settings, or a pack, that cannot produce a policy."""


@dataclass(frozen=True)
class TrainOptions:
    hidden: int = 128
    layers: int = 2
    max_epochs: int = 200
    patience: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def check(self, inputs: int | None = None, actions: int | None = None) -> None:
        """Every option in range, and the network small enough to build (`inputs` features and
        `actions` outputs; without them it is bounded from below, before the pack is read)."""
        for name, value in asdict(self).items():
            low_ok = value >= 0 if name == "weight_decay" else value > 0  # no weight decay is a valid choice
            if not (low_ok and math.isfinite(value)):  # an infinite --lr trains a NaN network
                bound = ">= 0" if name == "weight_decay" else "> 0"
                raise TrainError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")
        if self.layers > MAX_LAYERS:
            raise TrainError(f"--layers must be at most {MAX_LAYERS}, got {self.layers}")
        size = network_parameters(inputs or 1, actions or 1, self.hidden, self.layers)
        if size > MAX_PARAMETERS:
            on = f" on {inputs} features" if inputs else ""
            raise TrainError(f"--hidden {self.hidden} with --layers {self.layers}{on} makes a network of "
                             f"{'' if inputs else 'at least '}{size:,} parameters; expected at most "
                             f"{MAX_PARAMETERS:,} (its weights and optimiser state must fit in memory)")


@dataclass
class SplitData:
    features: torch.Tensor  # standardised, prepared
    targets: torch.Tensor
    mask: torch.Tensor


@dataclass
class TrainResult:
    policy: LearnedPolicy
    evaluation: dict[str, ClassificationReport]  # "val", "test"
    epochs_run: int
    best_epoch: int


def load_split(pack: Pack, names: Sequence[str], split: str, target: str) -> SplitData:
    """A split's labelled rows for `target`; unlabelled (unbranched, for the oracle) rows dropped."""
    data = pack.tensors(list(names), split=split, normalize=True, labels=TARGETS[target])
    keep = data.actions != NO_ACTION
    targets, mask = data.actions[keep], data.action_mask[keep]
    invalid = int((~mask.gather(1, targets.unsqueeze(1))).sum()) if len(targets) else 0
    if invalid:  # the masked logit is -inf: an infinite loss, and a label no policy may choose
        raise TrainError(f"{pack.path}: {invalid} steps of the {split} split are labelled ({TARGETS[target]}) with "
                         "an action their action_mask marks invalid; the pack's labels and masks disagree")
    return SplitData(prepare(data.features[keep]), targets, mask)


def class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (present classes * n_c): each action present in the train split weighs the same in total."""
    counts = torch.bincount(targets, minlength=classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(targets) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def train_policy(pack: Pack, features: str | Sequence[str], target: str, rng_seed: int = 0,
                 options: TrainOptions | None = None) -> TrainResult:
    options = options or TrainOptions()
    options.check()
    if target not in TARGETS:
        raise TrainError(f"--target {target!r}; expected one of: {', '.join(TARGETS)}")
    names = pack.feature_names(features)
    options.check(len(names), len(pack.manifest.actions))
    for split in SPLITS:  # every split must hold episodes before any data is read
        _check_split_exists(pack, split)
    data = {split: _checked_split(pack, names, split, target) for split in SPLITS}
    actions = list(pack.manifest.actions)
    weights = class_weights(data["train"].targets, len(actions))
    with torch.random.fork_rng():
        torch.manual_seed(rng_seed)
        net = PolicyNet(len(names), len(actions), options.hidden, options.layers)
        epochs_run, best_epoch = _fit(net, data, weights, options, rng_seed)
    centre, scale = pack.normalization(names, True)
    assert centre is not None and scale is not None
    policy = LearnedPolicy(net=net, feature_names=names, centre=centre.astype(np.float64),
                           scale=scale.astype(np.float64), actions=actions)
    evaluation = {split: evaluate(policy, data[split], actions) for split in ("val", "test")}
    policy.meta = _meta(pack, features, target, rng_seed, options, data, evaluation, epochs_run, best_epoch)
    return TrainResult(policy, evaluation, epochs_run, best_epoch)


def _check_split_exists(pack: Pack, split: str) -> None:
    if split not in pack.manifest.splits:
        raise TrainError(f"{pack.path}: the pack has no {split!r} split; train needs train, val and test")
    if not pack.manifest.files_of("steps", [split]):
        raise TrainError(f"{pack.path}: the {split} split holds no episodes (episodes are assigned to splits "
                         f"by a hash of their id, {pack.manifest.splits}); generate more episodes")


def _checked_split(pack: Pack, names: Sequence[str], split: str, target: str) -> SplitData:
    data = load_split(pack, names, split, target)
    if len(data.targets) == 0:
        why = " (only counterfactually branched steps carry oracle labels)" if target == "oracle" else ""
        raise TrainError(f"{pack.path}: the {split} split has no labelled steps for --target {target}{why}; "
                         "generate more episodes, or a larger --counterfactual fraction")
    return data


def _fit(net: PolicyNet, data: dict[str, SplitData], weights: torch.Tensor, options: TrainOptions,
         rng_seed: int) -> tuple[int, int]:
    """Minibatch AdamW; keeps the weights of the epoch with the lowest weighted validation loss."""
    train, val = data["train"], data["val"]
    optimiser = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order = torch.Generator().manual_seed(rng_seed)
    best, best_state, best_epoch, epoch = float("inf"), None, 0, 0
    for epoch in range(1, options.max_epochs + 1):
        net.train()
        for batch in torch.randperm(len(train.targets), generator=order).split(options.batch_size):
            loss = F.cross_entropy(net(train.features[batch], train.mask[batch]), train.targets[batch],
                                   weight=weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        current = _loss(net, val, weights)
        if current < best - 1e-6:
            best, best_epoch = current, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= options.patience:
            break
    if best_state is None:  # every epoch's validation loss was NaN or infinite: the weights diverged
        raise TrainError(f"training diverged: no epoch gave a finite validation loss (--lr {options.lr}); "
                         "use a smaller --lr")
    net.load_state_dict(best_state)
    return epoch, best_epoch


def _loss(net: PolicyNet, split: SplitData, weights: torch.Tensor) -> float:
    """Weighted cross-entropy; labels of actions absent from train (weight 0) do not count."""
    net.eval()
    with torch.no_grad():
        losses = F.cross_entropy(net(split.features, split.mask), split.targets, reduction="none")
        w = weights[split.targets]
        return float((losses * w).sum() / w.sum()) if float(w.sum()) > 0 else float(losses.mean())


def evaluate(policy: LearnedPolicy, split: SplitData, actions: Sequence[str]) -> ClassificationReport:
    predicted = policy.predict(split.features, split.mask)
    return classification_report(split.targets.numpy(), predicted.numpy(), actions)


def _meta(pack: Pack, features: str | Sequence[str], target: str, rng_seed: int, options: TrainOptions,
          data: dict[str, SplitData], evaluation: dict[str, ClassificationReport], epochs_run: int,
          best_epoch: int) -> dict[str, Any]:
    manifest = pack.manifest
    generation = (manifest.provenance.model_extra or {}).get("generation")
    return {
        "target": target,
        "features": features if isinstance(features, str) else list(features),
        "provenance": {
            "pack": str(pack.path.resolve()),
            "pack_manifest_sha256": file_sha256(pack.path / MANIFEST_NAME),
            "pack_commit": manifest.commit,
            "pack_profile": manifest.telemetry_config.profile_name,
            "pack_generation": generation,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
        },
        "training": {"seed": rng_seed, **asdict(options), "epochs_run": epochs_run, "best_epoch": best_epoch,
                     "rows": {split: int(len(d.targets)) for split, d in data.items()},
                     "selection": "lowest class-weighted validation loss"},
        "evaluation": {split: report.to_dict() for split, report in evaluation.items()},
    }
