"""The morphogenetic training environment: one episode = one host trained for `epochs` epochs.

    env = MorphogeneticEnv(load_dataset("digits"), draw_scenario(rng_seed, i), load_config("minimal"),
                           rng_seed=episode_rng_seed(rng_seed, i))
    row = env.reset()                      # epoch 0 trained, its feature row
    while True:
        mask = env.valid_mask()            # over Action, for the decision about to be made
        row, reward, done, info = env.step(action)   # apply the action, train one epoch
        if done:
            break

Each `step` is one decision: the action is applied to the slot's seed lifecycle, then one epoch is
trained and validated under the DiagnosticTracker, whose row is the next observation.

Every epoch is `batches_per_epoch` optimizer steps (12) whatever the cause, drawn from consecutive
shuffles of the episode's training set: a cause that shrinks the training set must not show in
`global_step`. The one seed slot (`slot2`) sits after the last block, before pooling and the head.
The episode's primary score (`primary_score.py`) is the held-out test accuracy at the end minus the
parameter-epochs its seeds held; `param_epochs` accrues that cost as the episode runs.

Determinism: every random choice comes from a generator seeded from `rng_seed` (host and seed
initialisation, data shuffling, the scenario's data corruption, the tracker's sampling), never from
the global RNGs, so an episode depends only on (rng_seed, episode index) and on nothing a worker process
did before. Float reductions depend on torch's intra-op thread count (and on the device), so
bit-exact repeats need the same `torch.set_num_threads` value: pin it per worker process.
`snapshot()` / `restore()` capture the full state, so a counterfactual branch can train other
actions for k epochs and the main episode then continues bit for bit as if it never branched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.environment.actions import Action, valid_actions
from pipelines.environment.blueprints import build_blueprint
from pipelines.environment.datasets import Dataset
from pipelines.environment.global_rng import capture_global_rng, restore_global_rng
from pipelines.environment.host import HostCNN, SeedSlot
from pipelines.environment.lifecycle import LIVE_STAGES, SeedLifecycle
from pipelines.environment.primary_score import PrimaryScore, primary_score
from pipelines.environment.scenarios import NOMINAL_LR, Scenario
from telemetry import DiagnosticTracker, SeedStage, SeedStatus, TelemetryConfig

SLOT = "slot2"  # after block 3: where the vanishing and dead-unit stalls can be reached
# Learning-rate factor as a function of episode progress in [0, 1). "step" keeps the scenario's rate
# for the first 80% of the episode, then divides it by 10, as common recipes do: the cause acts for
# most of the episode, and the final accuracy is measured after a calmer phase, not on one noisy epoch.
LR_SCHEDULES = {
    "step": lambda progress: 0.1 if progress >= 0.8 else 1.0,
    "constant": lambda progress: 1.0,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}
_STREAMS = ("host_init", "shuffle", "data", "germinate", "tracker")


class InvalidAction(ValueError):
    """An action the current valid-action mask excludes."""


def episode_rng_seed(rng_seed: int, episode: int) -> int:
    """The environment's RNG seed for episode `episode` of a run seeded with `rng_seed` (whatever the workers)."""
    return int(np.random.SeedSequence([rng_seed, episode]).generate_state(1)[0])


@dataclass(frozen=True)
class EnvOptions:
    """Knobs of the environment itself (the scenario holds what goes wrong)."""

    batch_size: int = 128
    width: float = 0.25
    ramp_epochs: int = 3
    seed_lr: float = NOMINAL_LR
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Accuracy points per epoch per 100% extra parameters held in seeds: the primary score's and the
    # reward's cost term (a seed as large as the host held for 10 epochs costs 1 point).
    param_cost: float = 0.1
    lr_schedule: str = "step"  # see LR_SCHEDULES
    batches_per_epoch: int = 12  # optimizer steps per epoch, the same for every cause


@dataclass
class EnvState:
    """Everything `restore` needs; opaque to callers, reusable any number of times."""

    model: dict[str, torch.Tensor]
    seed_module: torch.nn.Module | None
    lifecycle: SeedLifecycle
    optimizer: dict[str, Any]
    tracker: dict[str, Any]
    shuffle_rng: torch.Tensor
    global_rng: dict[str, Any]
    counters: dict[str, Any]


class MorphogeneticEnv:
    """One episode of a host with one seed slot (`slot2`), driven one decision per epoch.

    `epochs` counts every trained epoch: `reset` trains epoch 0, then `epochs - 1` decisions follow.
    The scenario's learning rate drives the host's parameter group; each seed gets its own group at
    `options.seed_lr`, both scaled by the learning-rate schedule.
    """

    def __init__(self, dataset: Dataset, scenario: Scenario, telemetry_config: TelemetryConfig, rng_seed: int,
                 epochs: int = 25, device: str | torch.device = "cpu",
                 options: EnvOptions | None = None) -> None:
        options = options or EnvOptions()
        if options.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {options.lr_schedule!r}")
        if epochs < 2:
            raise ValueError(f"epochs must be >= 2 (epoch 0 plus at least one decision), got {epochs}")
        self.dataset, self.scenario, self.config = dataset, scenario, telemetry_config
        self.rng_seed, self.epochs, self.device = rng_seed, epochs, torch.device(device)
        self.options = options
        children = np.random.SeedSequence(rng_seed).spawn(len(_STREAMS))
        self._rng_seeds = {name: int(c.generate_state(1)[0]) for name, c in zip(_STREAMS, children, strict=True)}
        self.tracker: DiagnosticTracker | None = None

    # ---- building --------------------------------------------------------------------------------
    def _build(self) -> None:
        """Fresh host, data, optimizer and tracker for a new episode, all from the episode seed."""
        if self.tracker is not None:
            self.tracker.close()
        ds, sc = self.dataset, self.scenario
        rng = np.random.default_rng(self._rng_seeds["data"])
        x, y = sc.training_set(ds.x_train, ds.y_train, ds.num_classes, rng)
        self.x_train, self.y_train = x.to(self.device), y.to(self.device)
        self.x_val, self.y_val = ds.x_val.to(self.device), ds.y_val.to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._rng_seeds["host_init"])
            self.model = HostCNN(ds.channels, ds.num_classes, width=self.options.width * sc.width,
                                 input_size=ds.size, slots=(SLOT,))
        sc.initialise(self.model)
        self.model.to(self.device)
        self.optimizer = self._make_optimizer()
        self.shuffle = torch.Generator()
        self.shuffle.manual_seed(self._rng_seeds["shuffle"])
        self.tracker = DiagnosticTracker(self.model, self.config, ds.num_classes, rng_seed=self._rng_seeds["tracker"])
        self.epoch, self.done, self.accuracy = 0, False, 0.0
        self.param_epochs = 0.0  # sum over trained epochs after a decision of the seed's parameter share
        self.tried: tuple[str, ...] = ()  # blueprints germinated so far, in order
        self.isolated_seed_loss: float | None = None
        self.seed_path_accuracy: float | None = None

    @property
    def slot(self) -> SeedSlot:
        return getattr(self.model, SLOT)

    def _make_optimizer(self) -> torch.optim.SGD:
        o = self.options
        opt = torch.optim.SGD(self.model.host_parameters(), lr=self.scenario.lr, momentum=o.momentum,
                              weight_decay=o.weight_decay)
        opt.param_groups[0]["base_lr"] = self.scenario.lr
        seed = self.model.seed_slots()[SLOT]
        if seed is not None:
            opt.add_param_group({"params": list(seed.parameters()), "lr": o.seed_lr, "base_lr": o.seed_lr})
        return opt

    def _set_learning_rates(self) -> None:
        """Per-epoch learning rate of every group: its base rate times the schedule's factor."""
        factor = LR_SCHEDULES[self.options.lr_schedule](self.epoch / self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    # ---- episode ---------------------------------------------------------------------------------
    def reset(self) -> dict[str, Any]:
        """Start the episode: build everything from the seed, train epoch 0, return its feature row."""
        self._build()
        row, self.accuracy = self._run_epoch()
        return row

    def valid_mask(self) -> np.ndarray:
        """Boolean mask over `Action` for the decision about to be made."""
        slot = self.slot
        return valid_actions(slot.stage, slot_free=slot.can_germinate,
                             ramp_complete=slot.lifecycle.ramp_complete)

    def step(self, action: Action | int) -> tuple[dict[str, Any], dict[str, float], bool, dict[str, Any]]:
        """Apply `action`, train one epoch; (feature row, reward components, done, info)."""
        if self.tracker is None or self.done:
            raise RuntimeError("the episode is over or not started; call reset()")
        action = Action(action)
        mask = self.valid_mask()
        if not mask[action]:
            valid = ", ".join(a.name for a in Action if mask[a])
            raise InvalidAction(f"{action.name} is not valid while the seed is {self.slot.stage.name}; "
                                f"valid: {valid}")
        self._apply(action)
        self.epoch += 1
        previous = self.accuracy
        row, self.accuracy = self._run_epoch()
        self.done = self.epoch >= self.epochs - 1
        return row, self._reward(previous), self.done, self._info(action)

    def _apply(self, action: Action) -> None:
        slot, epoch = self.slot, self.epoch
        if action.blueprint is not None:
            seed = self._new_seed(action.blueprint)
            slot.germinate(seed, action.blueprint, epoch, ramp_epochs=self.options.ramp_epochs,
                           accuracy=self.accuracy)
            lr = self.options.seed_lr
            self.optimizer.add_param_group({"params": list(seed.parameters()), "lr": lr, "base_lr": lr})
            self.tried = (*self.tried, action.blueprint)
        elif action == Action.ADVANCE:
            slot.advance(epoch)
        elif action == Action.FOSSILIZE:
            slot.fossilize(epoch)
        elif action == Action.CULL:
            self._forget(slot.cull(epoch))

    def _new_seed(self, blueprint: str) -> torch.nn.Module:
        """A seed initialised from a stream keyed by (episode, epoch, blueprint): same choice, same seed."""
        action = Action.germinate(blueprint).value
        key = np.random.SeedSequence([self._rng_seeds["germinate"], self.epoch, action])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(key.generate_state(1)[0]))
            module = build_blueprint(blueprint, self.slot.channels)
        return module.to(self.device)

    def _forget(self, seed: torch.nn.Module) -> None:
        """Drop a culled seed's parameter group and optimizer state."""
        ids = {id(p) for p in seed.parameters()}
        self.optimizer.param_groups[:] = [g for g in self.optimizer.param_groups
                                          if not any(id(p) in ids for p in g["params"])]
        for p in seed.parameters():
            self.optimizer.state.pop(p, None)

    # ---- one epoch -------------------------------------------------------------------------------
    def _run_epoch(self) -> tuple[dict[str, Any], float]:
        lifecycle = self.slot.lifecycle
        lifecycle.begin_epoch()
        self._set_learning_rates()
        self._train_epoch()
        accuracy = self._validate()
        lifecycle.end_epoch()
        self.param_epochs += self.seed_parameter_share()  # zero at epoch 0: no decision, no seed yet
        row = self.tracker.end_step(epoch=self.epoch, seed=self._seed_status(accuracy))
        return row, accuracy

    def _train_epoch(self) -> None:
        """`batches_per_epoch` optimizer steps; a TRAINING seed also learns from its isolated loss."""
        model, opt, tracker = self.model, self.optimizer, self.tracker
        model.train()
        order = self._epoch_order()
        seed_losses = []
        for idx in order.split(self.options.batch_size):
            x, y = self.x_train[idx], self.y_train[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            seed_loss = model.isolated_seed_loss(y)
            (loss if seed_loss is None else loss + seed_loss).backward()
            tracker.train_batch(loss, logits, y)
            opt.step()
            if seed_loss is not None:
                seed_losses.append(seed_loss.detach())
        self.isolated_seed_loss = float(torch.stack(seed_losses).mean()) if seed_losses else None

    def _epoch_order(self) -> torch.Tensor:
        """`batches_per_epoch` full batches of indices, from as many consecutive shuffles as it takes."""
        n, need = len(self.y_train), self.options.batches_per_epoch * self.options.batch_size
        perms = [torch.randperm(n, generator=self.shuffle) for _ in range(-(-need // n))]
        return torch.cat(perms)[:need].to(self.device)

    def primary_score(self) -> PrimaryScore:
        """The episode's primary score (primary_score.py); only after its last epoch."""
        return primary_score(self)

    @torch.no_grad()
    def _validate(self, batch_size: int = 1024) -> float:
        self.model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with self.tracker.validating():
            for start in range(0, len(self.y_val), batch_size):
                x, y = self.x_val[start:start + batch_size], self.y_val[start:start + batch_size]
                logits = self.model(x)
                self.tracker.val_batch(logits, y, inputs=x)
                correct += (logits.argmax(1) == y).sum()
        self.seed_path_accuracy = self._seed_path_accuracy(batch_size)
        self.model.train()
        return 100.0 * int(correct) / len(self.y_val)

    def _seed_path_accuracy(self, batch_size: int) -> float | None:
        """Validation accuracy with a TRAINING seed's output in place of the slot's (alpha = 1).

        The host's output ignores a seed in isolation, so accuracy since germination says nothing
        about the seed; this is the evidence a decision to blend it in needs. Outside the tracker's
        validation pass, so no telemetry sees it. None unless the seed is in TRAINING.
        """
        slot = self.slot
        if slot.seed is None or slot.stage != SeedStage.TRAINING:
            return None
        correct = 0
        slot.substitute = True
        try:
            for start in range(0, len(self.y_val), batch_size):
                x, y = self.x_val[start:start + batch_size], self.y_val[start:start + batch_size]
                correct += int((self.model(x).argmax(1) == y).sum())
        finally:
            slot.substitute = False
        return 100.0 * correct / len(self.y_val)

    def policy_view(self, row: dict[str, Any]) -> dict[str, Any]:
        """What a rule-based policy sees: the feature row plus `seed_path_gain`, the seed path's
        validation accuracy minus the host's (points; None unless a seed is in TRAINING)."""
        path = self.seed_path_accuracy
        return {**row, "seed_path_gain": None if path is None else path - self.accuracy}

    def _seed_status(self, accuracy: float) -> SeedStatus:
        slot, life = self.slot, self.slot.lifecycle
        since = life.accuracy_at_germination
        return SeedStatus(
            has_active_seed=slot.seed is not None and life.stage in LIVE_STAGES,
            stage=life.stage,
            epochs_in_stage=life.epochs_in_stage if life.stage != SeedStage.DORMANT else 0,
            alpha=life.alpha,
            improvement=0.0 if since is None else accuracy - since,
            available_slots=int(slot.can_germinate),
            val_accuracy=accuracy,
            seed_path_accuracy=self.seed_path_accuracy,
            isolated_seed_loss=self.isolated_seed_loss if life.stage == SeedStage.TRAINING else None,
            blueprint=life.blueprint if slot.seed is not None else None,
            tried=self.tried,
            param_share=self.seed_parameter_share(),
            param_epochs=self.param_epochs,
        )

    # ---- reward and info ---------------------------------------------------------------------------
    def seed_parameter_share(self) -> float:
        """Parameters held in the slot's seed, as a share of the host's own."""
        seed = self.model.seed_slots()[SLOT]
        if seed is None:
            return 0.0
        host = sum(p.numel() for p in self.model.host_parameters())
        return sum(p.numel() for p in seed.parameters()) / host

    def _reward(self, previous_accuracy: float) -> dict[str, float]:
        """Reward = accuracy gain this epoch - parameter cost; summed over an episode the first term
        telescopes to final minus epoch-0 accuracy."""
        gain = self.accuracy - previous_accuracy
        cost = -self.options.param_cost * self.seed_parameter_share()
        return {"accuracy_delta": gain, "param_cost": cost, "total": gain + cost}

    def _info(self, action: Action) -> dict[str, Any]:
        """Facts about the step for logs and rules; `isolated_seed_loss` (a TRAINING seed's mean loss
        through the frozen host, None otherwise) is the only evidence of a seed's worth before it
        affects the host's output."""
        life = self.slot.lifecycle
        return {"epoch": self.epoch, "action": action.name, "val_accuracy": self.accuracy,
                "stage": life.stage.name, "alpha": life.alpha, "blueprint": life.blueprint,
                "seed_parameter_share": self.seed_parameter_share(),
                "isolated_seed_loss": self.isolated_seed_loss,
                "seed_path_accuracy": self.seed_path_accuracy}

    # ---- counterfactual branching ------------------------------------------------------------------
    def snapshot(self) -> EnvState:
        """Everything the rest of the episode depends on, copied (the env keeps running unaffected)."""
        if self.tracker is None:
            raise RuntimeError("nothing to snapshot before reset()")
        seed = self.model.seed_slots()[SLOT]
        host = {k: v.detach().clone() for k, v in self.model.state_dict().items() if ".seed." not in k}
        return EnvState(
            model=host,
            seed_module=copy.deepcopy(seed),
            lifecycle=copy.deepcopy(self.slot.lifecycle),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            tracker=self.tracker.state_dict(),
            shuffle_rng=self.shuffle.get_state(),
            global_rng=capture_global_rng(),
            counters={"epoch": self.epoch, "done": self.done, "accuracy": self.accuracy,
                      "seed_path_accuracy": self.seed_path_accuracy, "param_epochs": self.param_epochs,
                      "tried": self.tried, "isolated_seed_loss": self.isolated_seed_loss},
        )

    def restore(self, state: EnvState) -> None:
        """Return to `state` exactly; the state can be restored again later."""
        slot = self.slot
        slot.seed = copy.deepcopy(state.seed_module)
        slot.lifecycle = copy.deepcopy(state.lifecycle)
        slot.take_isolated_output()
        missing, unexpected = self.model.load_state_dict(state.model, strict=False)
        if unexpected or any(".seed." not in k for k in missing):
            raise RuntimeError(f"snapshot does not match the host: missing {missing}, "
                               f"unexpected {unexpected}")
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        self.tracker.load_state_dict(state.tracker)
        self.shuffle.set_state(state.shuffle_rng)
        restore_global_rng(state.global_rng)
        (self.epoch, self.done, self.accuracy, self.seed_path_accuracy, self.param_epochs, self.tried,
         self.isolated_seed_loss) = (state.counters[k] for k in (
            "epoch", "done", "accuracy", "seed_path_accuracy", "param_epochs", "tried", "isolated_seed_loss"))

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
