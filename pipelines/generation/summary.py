"""Episode summaries: key moments, the trajectory they spell, the outcome and each seed's fate.

Built from what the episode recorded step by step (the feature row seen, the action taken, the
stage the seed was in), so a summary never says anything the steps table cannot confirm:

- key moments: `plateau` (accuracy flat for PLATEAU_EPOCHS epochs, once per onset), `germinate`,
  `train` (GERMINATED -> TRAINING), `blend` (TRAINING -> BLENDING), `fossilize`, `cull`, and
  `diverge` (the first epoch with a non-finite loss or gradient, the one after the last decision included);
- trajectory: the key moments' events joined by " -> ", e.g. `plateau -> germinate -> train ->
  blend -> fossilize`;
- outcome: `diverged`, else `fossilized` (a seed became part of the host), `culled` (seeds were
  tried, none kept), `seed_live_at_end`, or `no_intervention`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.environment.actions import Action

PLATEAU_EPOCHS = 3
_EVENTS = {Action.FOSSILIZE: "fossilize", Action.CULL: "cull"}


@dataclass
class SeedRecord:
    blueprint: str
    germinated_epoch: int
    accuracy_at_germination: float
    outcome: str = "live"
    ended_epoch: int | None = None
    improvement: float | None = None


@dataclass
class EpisodeLog:
    """Filled one decision at a time by the episode runner; summarised at the end."""

    slot: str
    moments: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[SeedRecord] = field(default_factory=list)
    diverged: bool = False
    _plateau: bool = False

    def observe(self, epoch: int, row: dict[str, Any], nonfinite: bool) -> None:
        """Facts visible in the row before the decision at `epoch`."""
        plateau = int(row["plateau_epochs"]) >= PLATEAU_EPOCHS
        if plateau and not self._plateau:
            self._moment(epoch, "plateau", f"accuracy flat for {int(row['plateau_epochs'])} epochs")
        self._plateau = plateau
        self.observe_divergence(epoch, nonfinite)

    def observe_divergence(self, epoch: int, nonfinite: bool) -> None:
        """The first non-finite epoch; also called for the row after the last decision, which no step
        holds but whose training (and the final accuracy measured after it) diverged all the same."""
        if nonfinite and not self.diverged:
            self.diverged = True
            self._moment(epoch, "diverge", "non-finite loss or gradients")

    def act(self, epoch: int, action: Action, stage_before: str, accuracy: float) -> None:
        """Record what `action`, taken at `epoch` with the seed in `stage_before`, did."""
        if action.blueprint is not None:
            self.seeds.append(SeedRecord(action.blueprint, epoch, accuracy))
            self._moment(epoch, "germinate", action.blueprint)
        elif action == Action.ADVANCE:
            event = "train" if stage_before == "GERMINATED" else "blend"
            self._moment(epoch, event, self.seeds[-1].blueprint)
        elif action in _EVENTS:
            seed = self.seeds[-1]
            seed.outcome = "fossilized" if action == Action.FOSSILIZE else "culled"
            seed.ended_epoch = epoch
            seed.improvement = accuracy - seed.accuracy_at_germination
            self._moment(epoch, _EVENTS[action], f"{seed.blueprint}, {seed.improvement:+.2f} points")

    def finish(self, final_epoch: int, final_accuracy: float, final_stage: str) -> None:
        """A seed still live when the episode ends keeps its stage as its outcome."""
        for seed in self.seeds:
            if seed.outcome == "live":
                seed.outcome = final_stage.lower()
                seed.ended_epoch = final_epoch
                seed.improvement = final_accuracy - seed.accuracy_at_germination

    def _moment(self, epoch: int, event: str, detail: str) -> None:
        self.moments.append({"epoch": epoch, "event": event, "detail": detail})

    # ---- summary -----------------------------------------------------------------------------------
    @property
    def trajectory(self) -> str:
        return " -> ".join(m["event"] for m in self.moments) or "steady"

    @property
    def outcome(self) -> str:
        kinds = {s.outcome for s in self.seeds}
        if self.diverged:
            return "diverged"
        if "fossilized" in kinds:
            return "fossilized"
        if kinds == {"culled"}:
            return "culled"
        return "seed_live_at_end" if kinds else "no_intervention"

    def seed_outcomes(self) -> list[dict[str, Any]]:
        return [{"slot": self.slot, "blueprint": s.blueprint, "outcome": s.outcome,
                 "germinated_epoch": s.germinated_epoch, "ended_epoch": s.ended_epoch,
                 "improvement": s.improvement} for s in self.seeds]

