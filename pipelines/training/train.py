"""Policy training from a pack: imitate the behaviour policy, or learn the counterfactual oracle.

    result = train_policy(open_pack("runs/pack"), features="minimal", target="oracle", rng_seed=0)
    result.policy.save("runs/policy-minimal")

Data comes through the pack reader: features selected by name (a profile name slices a larger pack
to exactly that profile's features), standardised with the train split's quick stats, split by
episode as the pack assigned them. Targets:

- `heuristic`: the action the behaviour policy took at every step (imitation);
- `oracle`: the step's `best_action` from counterfactual rollouts, on the branched steps only;
- `advantage`: every stored action value's advantage over WAIT, Q(s,a) - Q(s,WAIT), regressed on
  the branched steps (advantage.py); the policy takes the valid action of highest predicted
  advantage, WAIT's being 0;
- `expert`: the privileged expert's action (`expert_action`, recorded on every step): the expert
  knows the cause, the policy must infer it from the features. DAgger (dagger.py) adds the states
  the policy itself visits, labelled by the same expert.

Models (`TrainOptions.model`): `mlp` reads one row; `gru` reads the episode's rows up to the current
one (sequences.py), every row of the episode as history, the targets where they exist.

Invalid actions are masked out of the outputs. WAIT dominates the classification targets, so their
loss is weighted by inverse class frequency in the train split; the advantage loss is the mean
squared error over the stored values. Model selection uses the validation loss (early stopping
with patience); the reported scores are balanced accuracy, per-action recall and the confusion
matrix on the val and test splits (for `advantage`, against the unique best action where there is
one, with the mean regret). Same options and seed give the same policy.
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
    MODELS,
    LearnedPolicy,
    outputs,
    prepare,
)
from pipelines.policies.networks import PolicyNet, SequenceNet, build_network, network_parameters
from pipelines.training.advantage import advantage_targets, regret
from pipelines.training.metrics import ClassificationReport, classification_report
from pipelines.training.sequences import episode_rows, padded
from telemetry import EsperError
from telemetry.packs import MANIFEST_NAME, NO_ACTION, Pack, file_sha256

# target -> the steps column its labels come from
TARGETS = {"heuristic": "action", "oracle": "best_action", "advantage": "counterfactual", "expert": "expert_action"}
SPLITS = ("train", "val", "test")
# No useful learning rate comes near it; far above it (about 3e37) AdamW's bias-corrected step
# overflows float32 and torch raises instead of diverging.
MAX_LR = 1e6


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
    model: str = "mlp"

    def check(self, inputs: int | None = None, actions: int | None = None) -> None:
        """Every option in range, and the network small enough to build (`inputs` features and
        `actions` outputs; without them it is bounded from below, before the pack is read)."""
        if self.model not in MODELS:
            raise TrainError(f"--model {self.model!r}; expected one of: {', '.join(MODELS)}")
        for name, value in asdict(self).items():
            if name == "model":
                continue
            low_ok = value >= 0 if name == "weight_decay" else value > 0  # no weight decay is a valid choice
            if not (low_ok and math.isfinite(value)):  # an infinite --lr trains a NaN network
                bound = ">= 0" if name == "weight_decay" else "> 0"
                raise TrainError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")
        if self.lr > MAX_LR:
            raise TrainError(f"--lr must be at most {MAX_LR:g}, got {self.lr}")
        if self.layers > MAX_LAYERS:
            raise TrainError(f"--layers must be at most {MAX_LAYERS}, got {self.layers}")
        size = network_parameters(inputs or 1, actions or 1, self.hidden, self.layers, self.model)
        if size > MAX_PARAMETERS:
            on = f" on {inputs} features" if inputs else ""
            raise TrainError(f"--hidden {self.hidden} with --layers {self.layers}{on} makes a network of "
                             f"{'' if inputs else 'at least '}{size:,} parameters; expected at most "
                             f"{MAX_PARAMETERS:,} (its weights and optimiser state must fit in memory)")


@dataclass
class SplitData:
    """A split's training data: rows [rows, ...] for the MLP, episodes [episodes, steps, ...] for the GRU."""

    features: torch.Tensor  # standardised, prepared
    mask: torch.Tensor  # valid actions [..., actions]
    labels: torch.Tensor  # action index [...], NO_ACTION where none (for `advantage`: the unique best)
    labelled: torch.Tensor  # bool [...]: the positions the target covers
    advantages: torch.Tensor | None = None  # float64 [..., actions], for `advantage`
    has: torch.Tensor | None = None  # bool [..., actions]: which advantages were stored

    @property
    def rows(self) -> int:
        return int(self.labelled.sum())

    def select(self, index: torch.Tensor) -> SplitData:
        """The rows (MLP) or episodes (GRU) at `index`."""
        pick = [None if t is None else t[index] for t in (self.advantages, self.has)]
        return SplitData(self.features[index], self.mask[index], self.labels[index], self.labelled[index], *pick)


@dataclass
class TrainResult:
    policy: LearnedPolicy
    evaluation: dict[str, ClassificationReport]  # "val", "test"
    epochs_run: int
    best_epoch: int


def load_split(pack: Pack, names: Sequence[str], split: str, target: str, model: str = "mlp",
               normalize: bool | tuple[np.ndarray, np.ndarray] = True) -> SplitData:
    """A split's rows with their `target`: for the MLP the labelled rows alone, for the GRU every
    episode in step order (unlabelled rows are history), padded. Standardised with the pack's train
    split statistics, or with a given (centre, scale) (another pack's, for DAgger's roll-ins)."""
    labels = "best_action" if target == "advantage" else TARGETS[target]
    data = pack.tensors(list(names), split=split, normalize=normalize, labels=labels)
    side = pack.steps(split=split, columns=["episode_id", "step", labels, "counterfactual"])
    actions = list(pack.manifest.actions)
    stored = torch.tensor([NO_ACTION if a is None else actions.index(a) for a in side.column(labels).to_pylist()],
                          dtype=data.actions.dtype)
    if not torch.equal(stored, data.actions):  # the two reads must see the same rows in the same order
        raise TrainError(f"{pack.path}: the {split} split's rows changed while being read; open the pack again")
    out = SplitData(prepare(data.features), data.action_mask, data.actions, data.actions != NO_ACTION)
    if target == "advantage":
        try:
            values, has = advantage_targets(side.column("counterfactual"), actions)
        except EsperError as exc:
            raise TrainError(f"{pack.path}: the {split} split: {exc}") from None
        out.advantages, out.has = torch.from_numpy(values), torch.from_numpy(has)
        out.labelled = out.has.any(dim=1)
        invalid = int((out.has & ~out.mask).any(dim=1).sum())
        what = "store counterfactual values for actions"
    else:
        labelled = out.labels[out.labelled]
        invalid = int((~out.mask[out.labelled].gather(1, labelled.unsqueeze(1))).sum()) if len(labelled) else 0
        what = f"are labelled ({TARGETS[target]}) with an action"
    if invalid:  # the masked output is -inf: an infinite loss, and a label no policy may choose
        raise TrainError(f"{pack.path}: {invalid} steps of the {split} split {what} their action_mask marks "
                         "invalid; the pack's labels and masks disagree")
    if model == "mlp":
        return out.select(out.labelled)
    episodes = episode_rows(side.column("episode_id").to_pylist(), side.column("step").to_pylist())
    return SplitData(padded(out.features, episodes, 0.0), padded(out.mask, episodes, True),
                     padded(out.labels, episodes, NO_ACTION), padded(out.labelled, episodes, False),
                     *(None if t is None else padded(t, episodes, 0) for t in (out.advantages, out.has)))


def joined(parts: Sequence[SplitData]) -> SplitData:
    """Several packs' data of one split as one: rows (MLP), or episodes (GRU) padded to the longest."""
    if len(parts) == 1:
        return parts[0]
    longest = max(p.features.shape[1] for p in parts) if parts[0].features.dim() == 3 else None

    def cat(name: str, fill: float | bool | int) -> torch.Tensor | None:
        tensors = [getattr(p, name) for p in parts]
        if tensors[0] is None:
            return None
        if longest is not None:
            tensors = [torch.cat([t, torch.full((t.shape[0], longest - t.shape[1], *t.shape[2:]), fill,
                                                dtype=t.dtype)], dim=1) for t in tensors]
        return torch.cat(tensors)

    return SplitData(*(cat(name, fill) for name, fill in (("features", 0.0), ("mask", True), ("labels", NO_ACTION),
                                                          ("labelled", False), ("advantages", 0), ("has", False))))


def class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (present classes * n_c): each action present in the train split weighs the same in total."""
    counts = torch.bincount(targets, minlength=classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(targets) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def train_policy(pack: Pack, features: str | Sequence[str], target: str, rng_seed: int = 0,
                 options: TrainOptions | None = None, extra: Sequence[Pack] = ()) -> TrainResult:
    """A fresh network trained on `pack`'s splits. `extra` packs (DAgger's roll-ins) add their rows
    to each split as they assigned them, standardised with `pack`'s train-split statistics, which
    the saved policy keeps: every row is standardised as the policy will standardise live rows."""
    options = options or TrainOptions()
    options.check()
    if target not in TARGETS:
        raise TrainError(f"--target {target!r}; expected one of: {', '.join(TARGETS)}")
    names = pack.feature_names(features)
    options.check(len(names), len(pack.manifest.actions))
    for split in SPLITS:  # every split must hold episodes before any data is read
        _check_split_exists(pack, split)
    for each in (pack, *extra):
        _check_joinable(pack, each, names, target)
    centre, scale = pack.normalization(names, True)
    assert centre is not None and scale is not None
    data = {split: _checked_split([pack, *extra], names, split, target, options.model, (centre, scale))
            for split in SPLITS}
    actions = list(pack.manifest.actions)
    if target == "advantage" and "WAIT" not in actions:
        raise TrainError(f"{pack.path}: --target advantage measures actions against WAIT; the pack's actions "
                         f"{actions} lack it")
    wait = actions.index("WAIT") if target == "advantage" else None
    train = data["train"]
    weights = class_weights(train.labels[train.labelled & (train.labels != NO_ACTION)], len(actions))
    with torch.random.fork_rng():
        torch.manual_seed(rng_seed)
        net = build_network(options.model, len(names), len(actions), options.hidden, options.layers)
        epochs_run, best_epoch = _fit(net, data, Loss(weights, wait), options, rng_seed)
    policy = LearnedPolicy(net=net, feature_names=names, centre=centre.astype(np.float64),
                           scale=scale.astype(np.float64), actions=actions, meta={"target": target})
    evaluation = {split: evaluate(policy, data[split], actions) for split in ("val", "test")}
    policy.meta = _meta(pack, features, target, rng_seed, options, data, evaluation, epochs_run, best_epoch)
    if target == "advantage":
        for split in ("val", "test"):
            policy.meta["evaluation"][split]["regret"] = split_regret(policy, data[split])
    return TrainResult(policy, evaluation, epochs_run, best_epoch)


def _check_split_exists(pack: Pack, split: str) -> None:
    if split not in pack.manifest.splits:
        raise TrainError(f"{pack.path}: the pack has no {split!r} split; train needs train, val and test")
    if not pack.manifest.files_of("steps", [split]):
        raise TrainError(f"{pack.path}: the {split} split holds no episodes (episodes are assigned to splits "
                         f"by a hash of their id, {pack.manifest.splits}); generate more episodes")


def _check_joinable(pack: Pack, each: Pack, names: Sequence[str], target: str) -> None:
    """`each` holds the target's column, `pack`'s features and its actions (so rows mean the same)."""
    if TARGETS[target] not in each.schema("steps").names:
        raise TrainError(f"{each.path}: the steps table has no {TARGETS[target]!r} column, which --target {target} "
                         "learns from (the pack was written before it was recorded); generate the pack again")
    if each is pack:
        return
    missing = [n for n in names if n not in set(each.manifest.feature_schema.index)]
    if missing or list(each.manifest.actions) != list(pack.manifest.actions):
        what = f"lacks the feature {missing[0]!r}" if missing else f"has actions {list(each.manifest.actions)}"
        raise TrainError(f"{each.path}: {what}; its rows cannot join those of {pack.path}")


def _checked_split(packs: Sequence[Pack], names: Sequence[str], split: str, target: str, model: str,
                   normalize: tuple[np.ndarray, np.ndarray]) -> SplitData:
    pack = packs[0]
    data = joined([load_split(p, names, split, target, model, normalize) for p in packs
                   if p is pack or p.manifest.files_of("steps", [split])])
    if data.rows == 0:
        why = (f" (only counterfactually branched steps carry {target} labels)"
               if target in ("oracle", "advantage") else "")
        raise TrainError(f"{pack.path}: the {split} split has no labelled steps for --target {target}{why}; "
                         "generate more episodes, or a larger --counterfactual fraction")
    return data


@dataclass(frozen=True)
class Loss:
    """The training loss: class-weighted cross-entropy on action labels, or, with `wait` (WAIT's
    output index, pinned at 0), the mean squared error of the stored advantages."""

    weights: torch.Tensor
    wait: int | None = None

    def __call__(self, net: PolicyNet | SequenceNet, split: SplitData, reduce: bool = True) -> torch.Tensor:
        at = split.labelled
        if self.wait is not None:
            assert split.advantages is not None and split.has is not None
            predicted = outputs(net, split.features, None, self.wait)[at]
            has = split.has[at]
            return F.mse_loss(predicted[has], split.advantages[at][has].float())
        logits = outputs(net, split.features, split.mask, None)[at]
        if reduce:
            return F.cross_entropy(logits, split.labels[at], weight=self.weights)
        losses = F.cross_entropy(logits, split.labels[at], reduction="none")
        w = self.weights[split.labels[at]]  # labels of actions absent from train (weight 0) do not count
        return (losses * w).sum() / w.sum() if float(w.sum()) > 0 else losses.mean()

    def validation(self, net: PolicyNet | SequenceNet, split: SplitData) -> float:
        net.eval()
        with torch.no_grad():
            return float(self(net, split, reduce=False))


def _fit(net: PolicyNet | SequenceNet, data: dict[str, SplitData], loss: Loss, options: TrainOptions,
         rng_seed: int) -> tuple[int, int]:
    """Minibatch AdamW; keeps the weights of the epoch with the lowest validation loss. A batch is
    `batch_size` rows for the MLP, and whole episodes of about as many rows for the GRU."""
    train, val = data["train"], data["val"]
    optimiser = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order = torch.Generator().manual_seed(rng_seed)
    size = options.batch_size if train.features.dim() == 2 else max(1, options.batch_size // train.features.shape[1])
    best, best_state, best_epoch, epoch = float("inf"), None, 0, 0
    for epoch in range(1, options.max_epochs + 1):
        net.train()
        for batch in torch.randperm(len(train.features), generator=order).split(size):
            part = train.select(batch)
            if part.rows == 0:  # GRU episodes without a labelled step: history only, nothing to fit
                continue
            value = loss(net, part)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
        current = loss.validation(net, val)
        if current < best - 1e-6 * (1.0 if loss.wait is None else 1e-3):  # advantages are small numbers
            best, best_epoch = current, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= options.patience:
            break
    if best_state is None:  # every epoch's validation loss was NaN or infinite: the weights diverged
        raise TrainError(f"training diverged: no epoch gave a finite validation loss (--lr {options.lr}, "
                         f"--weight-decay {options.weight_decay}); use a smaller --lr or --weight-decay")
    net.load_state_dict(best_state)
    return epoch, best_epoch


def evaluate(policy: LearnedPolicy, split: SplitData, actions: Sequence[str]) -> ClassificationReport:
    """The policy's choices against the split's action labels, where it has them."""
    predicted = policy.predict(split.features, split.mask)
    keep = split.labelled & (split.labels != NO_ACTION)
    return classification_report(split.labels[keep].numpy(), predicted[keep].numpy(), actions)


def split_regret(policy: LearnedPolicy, split: SplitData) -> float | None:
    """Mean value (accuracy - cost) the policy's choices lose against the best stored action."""
    assert split.advantages is not None and split.has is not None
    at = split.labelled
    chosen = policy.predict(split.features, split.mask)[at].numpy()
    return regret(chosen, split.advantages[at].numpy(), split.has[at].numpy())


def _meta(pack: Pack, features: str | Sequence[str], target: str, rng_seed: int, options: TrainOptions,
          data: dict[str, SplitData], evaluation: dict[str, ClassificationReport], epochs_run: int,
          best_epoch: int) -> dict[str, Any]:
    manifest = pack.manifest
    generation = (manifest.provenance.model_extra or {}).get("generation")
    selection = ("lowest validation mean squared advantage error" if target == "advantage"
                 else "lowest class-weighted validation loss")
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
                     "rows": {split: d.rows for split, d in data.items()}, "selection": selection},
        "evaluation": {split: report.to_dict() for split, report in evaluation.items()},
    }
