"""The seed lifecycle: an explicit state machine whose illegal transitions raise.

    DORMANT -> GERMINATED -> TRAINING -> BLENDING -> FOSSILIZED
                   \\------------\\-----------\\------> CULLED

The first implementation let "blending -> fossilized" fail silently, so seeds that were reported as
fossilized kept blending. Here every transition goes through `SeedLifecycle.transition`, which checks
one table and raises `IllegalTransition` for anything else; fossilizing additionally requires the
blending ramp to be complete (alpha == 1), because before that the host still leans on the old path.

One `SeedLifecycle` describes one seed. FOSSILIZED and CULLED are terminal: a slot whose seed was
culled gets a fresh lifecycle when it germinates again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telemetry import SeedStage

LEGAL_TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.CULLED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.CULLED}),
    SeedStage.BLENDING: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.CULLED: frozenset(),
}
LIVE_STAGES = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING})
TERMINAL_STAGES = frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED})


class IllegalTransition(RuntimeError):
    """A lifecycle transition the state machine does not allow; raised, never ignored."""


def is_legal(source: SeedStage, target: SeedStage) -> bool:
    """Whether the table allows `source -> target` (the ramp condition is checked separately)."""
    return target in LEGAL_TRANSITIONS[source]


@dataclass
class SeedLifecycle:
    """Stage, time in stage and blending weight of one seed.

    `alpha` is the blending weight used for the epoch being trained: each epoch begun in BLENDING
    raises it by 1 / ramp_epochs, so after `ramp_epochs` blending epochs it is exactly 1.
    """

    blueprint: str | None = None
    ramp_epochs: int = 3
    stage: SeedStage = SeedStage.DORMANT
    epochs_in_stage: int = 0
    blend_epochs: int = 0
    germinated_at: int | None = None
    accuracy_at_germination: float | None = None
    history: list[tuple[int, SeedStage]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ramp_epochs < 1:
            raise ValueError(f"ramp_epochs must be >= 1, got {self.ramp_epochs}")

    @property
    def is_live(self) -> bool:
        return self.stage in LIVE_STAGES

    @property
    def alpha(self) -> float:
        if self.stage == SeedStage.FOSSILIZED:
            return 1.0
        if self.stage == SeedStage.BLENDING:
            return min(1.0, self.blend_epochs / self.ramp_epochs)
        return 0.0

    @property
    def ramp_complete(self) -> bool:
        return self.stage == SeedStage.BLENDING and self.blend_epochs >= self.ramp_epochs

    def can_transition(self, target: SeedStage) -> bool:
        if not is_legal(self.stage, target):
            return False
        return target != SeedStage.FOSSILIZED or self.ramp_complete

    def transition(self, target: SeedStage, epoch: int) -> None:
        """Move to `target` or raise IllegalTransition naming both stages and the reason."""
        if not is_legal(self.stage, target):
            allowed = ", ".join(s.name for s in sorted(LEGAL_TRANSITIONS[self.stage])) or "nothing (terminal)"
            raise IllegalTransition(f"seed lifecycle: {self.stage.name} -> {target.name} is not allowed; "
                                    f"from {self.stage.name} the legal targets are: {allowed}")
        if target == SeedStage.FOSSILIZED and not self.ramp_complete:
            raise IllegalTransition(f"seed lifecycle: BLENDING -> FOSSILIZED needs the alpha ramp complete "
                                    f"({self.blend_epochs}/{self.ramp_epochs} blending epochs so far)")
        self.stage = target
        self.epochs_in_stage = 0
        if target == SeedStage.GERMINATED:
            self.germinated_at = epoch
        self.history.append((epoch, target))

    def begin_epoch(self) -> None:
        """Called before an epoch is trained: advances the blending ramp."""
        if self.stage == SeedStage.BLENDING:
            self.blend_epochs = min(self.blend_epochs + 1, self.ramp_epochs)

    def end_epoch(self) -> None:
        """Called after an epoch is trained: one more epoch spent in the current stage."""
        self.epochs_in_stage += 1
