"""Seed lifecycle legality (every pair), the slot's transitions, and valid-action masks."""

from __future__ import annotations

import itertools

import pytest
from torch import nn

from pipelines.environment.actions import ACTION_NAMES, Action, valid_actions
from pipelines.environment.host import SeedSlot
from pipelines.environment.lifecycle import LEGAL_TRANSITIONS, IllegalTransition, SeedLifecycle, is_legal
from telemetry.seed_status import SeedStage as S

LEGAL = {
    (S.DORMANT, S.GERMINATED),
    (S.GERMINATED, S.TRAINING), (S.GERMINATED, S.CULLED),
    (S.TRAINING, S.BLENDING), (S.TRAINING, S.CULLED),
    (S.BLENDING, S.FOSSILIZED), (S.BLENDING, S.CULLED),
}
PATH_TO = {
    S.DORMANT: [], S.GERMINATED: [S.GERMINATED], S.TRAINING: [S.GERMINATED, S.TRAINING],
    S.BLENDING: [S.GERMINATED, S.TRAINING, S.BLENDING],
    S.FOSSILIZED: [S.GERMINATED, S.TRAINING, S.BLENDING, S.FOSSILIZED],
    S.CULLED: [S.GERMINATED, S.CULLED],
}


def lifecycle_at(stage: S, ramp_epochs: int = 2) -> SeedLifecycle:
    life = SeedLifecycle(blueprint="conv", ramp_epochs=ramp_epochs)
    for target in PATH_TO[stage]:
        if target == S.FOSSILIZED:
            for _ in range(ramp_epochs):
                life.begin_epoch()
                life.end_epoch()
        life.transition(target, epoch=0)
    return life


def test_table_is_exactly_the_documented_machine():
    assert {(a, b) for a, targets in LEGAL_TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_every_pair_is_legal_or_raises(source, target):
    life = lifecycle_at(source)
    if source == S.BLENDING:  # complete the ramp so only the table decides
        for _ in range(life.ramp_epochs):
            life.begin_epoch()
    assert is_legal(source, target) == ((source, target) in LEGAL)
    if (source, target) in LEGAL:
        life.transition(target, epoch=3)
        assert life.stage == target and life.epochs_in_stage == 0 and life.history[-1] == (3, target)
    else:
        with pytest.raises(IllegalTransition, match=f"{source.name} -> {target.name} is not allowed"):
            life.transition(target, epoch=3)
        assert life.stage == source


def test_fossilize_needs_the_ramp_complete():
    life = lifecycle_at(S.BLENDING, ramp_epochs=3)
    alphas = []
    for _ in range(3):
        assert not life.can_transition(S.FOSSILIZED)
        with pytest.raises(IllegalTransition, match="ramp complete"):
            life.transition(S.FOSSILIZED, epoch=1)
        life.begin_epoch()
        alphas.append(life.alpha)
        life.end_epoch()
    assert alphas == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert life.ramp_complete and life.can_transition(S.FOSSILIZED)
    life.transition(S.FOSSILIZED, epoch=9)
    assert life.alpha == 1.0


def test_alpha_is_zero_outside_blending():
    for stage in (S.DORMANT, S.GERMINATED, S.TRAINING, S.CULLED):
        life = lifecycle_at(stage)
        life.begin_epoch()
        assert life.alpha == 0.0


def test_slot_transitions_and_errors():
    slot = SeedSlot(4)
    with pytest.raises(IllegalTransition, match="ADVANCE is not allowed from DORMANT"):
        slot.advance(0)
    with pytest.raises(IllegalTransition, match="DORMANT -> CULLED"):
        slot.cull(0)
    slot.germinate(nn.Identity(), "conv", epoch=1)
    with pytest.raises(IllegalTransition, match="cannot germinate"):
        slot.germinate(nn.Identity(), "norm", epoch=1)
    slot.advance(2)
    slot.advance(3)
    assert slot.stage == S.BLENDING
    with pytest.raises(IllegalTransition, match="ADVANCE is not allowed from BLENDING"):
        slot.advance(4)
    removed = slot.cull(4)
    assert isinstance(removed, nn.Identity) and slot.seed is None and slot.stage == S.CULLED
    slot.germinate(nn.Identity(), "norm", epoch=5)  # a culled slot accepts a new seed
    assert slot.stage == S.GERMINATED and slot.lifecycle.blueprint == "norm"


def test_action_order_and_names_are_fixed():
    assert ACTION_NAMES == ("WAIT", "GERMINATE_CONV", "GERMINATE_ATTENTION", "GERMINATE_NORM",
                            "GERMINATE_DEPTHWISE", "ADVANCE", "FOSSILIZE", "CULL")
    assert [a.blueprint for a in Action][1:5] == ["conv", "attention", "norm", "depthwise"]
    assert Action.germinate("depthwise") == Action.GERMINATE_DEPTHWISE


def _slot_at(stage: S, ramp_done: bool) -> SeedSlot:
    slot = SeedSlot(4)
    slot.lifecycle = lifecycle_at(S.BLENDING if stage == S.BLENDING else stage)
    if stage == S.BLENDING and ramp_done:
        for _ in range(slot.lifecycle.ramp_epochs):
            slot.lifecycle.begin_epoch()
    slot.seed = None if stage in (S.DORMANT, S.CULLED) else nn.Identity()
    return slot


def _applies(slot: SeedSlot, action: Action) -> bool:
    try:
        if action.blueprint is not None:
            slot.germinate(nn.Identity(), action.blueprint, epoch=1)
        elif action == Action.ADVANCE:
            slot.advance(1)
        elif action == Action.FOSSILIZE:
            slot.fossilize(1)
        elif action == Action.CULL:
            slot.cull(1)
    except IllegalTransition:
        return False
    return True


@pytest.mark.parametrize(("stage", "ramp_done"), [(s, False) for s in S] + [(S.BLENDING, True)])
def test_mask_is_valid_exactly_when_the_action_applies(stage, ramp_done):
    probe = _slot_at(stage, ramp_done)
    mask = valid_actions(probe.stage, slot_free=probe.can_germinate,
                         ramp_complete=probe.lifecycle.ramp_complete)
    for action in Action:
        assert mask[action] == _applies(_slot_at(stage, ramp_done), action), (stage.name, action.name)
    assert mask[Action.WAIT]


def test_mask_examples():
    def names(stage, free, ramp):
        return [a.name for a in Action if valid_actions(stage, slot_free=free, ramp_complete=ramp)[a]]

    assert names(S.DORMANT, True, False) == ["WAIT", "GERMINATE_CONV", "GERMINATE_ATTENTION",
                                             "GERMINATE_NORM", "GERMINATE_DEPTHWISE"]
    assert names(S.TRAINING, False, False) == ["WAIT", "ADVANCE", "CULL"]
    assert names(S.BLENDING, False, False) == ["WAIT", "CULL"]
    assert names(S.BLENDING, False, True) == ["WAIT", "FOSSILIZE", "CULL"]
    assert names(S.FOSSILIZED, False, False) == ["WAIT"]
