"""Training faults: an episode whose training diverges (NaN/Inf loss or gradients) is recorded as such,
with counts in its feature rows, flags on its steps and `diverged` on its summary, and the run goes on.

Divergence is made, not hoped for: a host learning rate of 1e6 (SGD with weight decay multiplies the
weights by about -500 per batch, so they overflow float32 within a few batches), or NaN written into
a weight right before a chosen epoch.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

import pipelines.generation.episode as episode_module
from pipelines.cli import main
from pipelines.environment.actions import Action
from pipelines.environment.datasets import Dataset, load_dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv
from pipelines.environment.scenarios import Scenario, draw_scenario
from pipelines.generation.episode import GenerationSpec, run_episode
from pipelines.generation.generate import _one_thread
from telemetry.config import load_config
from telemetry.packs.reader import open_pack
from telemetry.tracker import DiagnosticTracker

DIVERGENT = Scenario(name="lr_too_high", lr=1e6)
EPOCHS = 5


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset("synthetic", num_samples=600)


def nonfinite_row(row: dict[str, Any]) -> bool:
    """Independent of the annotation rules: a loss that is not finite, or a positive non-finite count."""
    losses = [row.get("train_loss"), row.get("val_loss")]
    counts = [row.get("loss_nonfinite_batches"), row.get("grad_nonfinite_count")]
    return any(v is not None and not math.isfinite(v) for v in losses) or any(v is not None and v > 0 for v in counts)


def spec(profile: str = "standard", **kw: Any) -> GenerationSpec:
    return GenerationSpec(config=load_config(profile), dataset="synthetic", rng_seed=3, epochs=EPOCHS,
                          counterfactual_fraction=kw.pop("counterfactual_fraction", 0.5), **kw)


def diverging(monkeypatch: pytest.MonkeyPatch, indices: set[int]) -> None:
    """Episodes in `indices` draw the divergent scenario; the others their usual one."""
    def draw(seed: int, index: int, names: tuple[str, ...] = ()) -> Scenario:
        return DIVERGENT if index in indices else draw_scenario(seed, index, names)
    monkeypatch.setattr(episode_module, "draw_scenario", draw)


def test_the_tracker_counts_every_non_finite_loss_and_gradient(dataset: Dataset, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The env runs a divergent episode to its end, and each row's counts equal what a spy on every
    training batch counted itself: batches with a non-finite loss, non-finite gradient elements."""
    spied: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    original = DiagnosticTracker.train_batch

    def spy(self: DiagnosticTracker, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        tracked = [p.grad for name in ("conv1", "conv2", "fc") for p in getattr(self.model, name).parameters()]
        spied[self._epoch][0] += int(not torch.isfinite(loss).item())
        spied[self._epoch][1] += sum(int((~torch.isfinite(g)).sum()) for g in tracked if g is not None)
        original(self, loss, logits, targets)

    monkeypatch.setattr(DiagnosticTracker, "train_batch", spy)
    env = MorphogeneticEnv(dataset, DIVERGENT, load_config("standard"), rng_seed=11, epochs=EPOCHS)
    with _one_thread():
        rows = [env.reset()]
        done = False
        while not done:
            row, _, done, _ = env.step(Action.WAIT)
            rows.append(row)
    env.close()
    assert len(rows) == EPOCHS
    assert any(not math.isfinite(r["train_loss"]) for r in rows), "the scenario did not diverge; make it harsher"
    for epoch, row in enumerate(rows):
        assert row["loss_nonfinite_batches"] == spied[epoch][0], epoch
        assert row["grad_nonfinite_count"] == spied[epoch][1], epoch
    assert sum(r["grad_nonfinite_count"] for r in rows) > 0
    assert rows[-1]["grad_health"] < 1.0


@pytest.mark.parametrize("profile", ["minimal", "standard"])
def test_a_divergent_episode_is_flagged_and_summarised(dataset: Dataset, monkeypatch: pytest.MonkeyPatch,
                                                       profile: str) -> None:
    """`diverged`, outcome "diverged", one "diverge" moment at the first non-finite step, and the red
    flag on exactly the steps whose row is non-finite; with or without gradient features."""
    diverging(monkeypatch, {0})
    with _one_thread():
        result = run_episode(spec(profile), 0, dataset)
    episode, steps = result.episode, result.steps
    assert len(steps) == EPOCHS - 1
    bad = [nonfinite_row(s) for s in steps]
    assert any(bad)
    assert episode["diverged"] is True and episode["outcome"] == "diverged"
    moments = [m for m in episode["key_moments"] if m["event"] == "diverge"]
    assert [m["epoch"] for m in moments] == [bad.index(True)]
    assert [("non_finite_training" in s["red_flags"]) for s in steps] == bad
    json.dumps(episode, allow_nan=False)  # the summary itself carries no NaN
    assert all(math.isfinite(s["hindsight_accuracy"]) for s in steps)


def test_a_healthy_episode_is_not_marked_diverged(dataset: Dataset) -> None:
    """The flag must be able to say no: a nominal run has no non-finite step and diverged=False."""
    with _one_thread():
        result = run_episode(spec(scenarios=("healthy",)), 0, dataset)
    assert not any(nonfinite_row(s) for s in result.steps)
    assert result.episode["diverged"] is False and result.episode["outcome"] != "diverged"
    assert not any("non_finite_training" in s["red_flags"] for s in result.steps)


def test_divergence_in_the_last_epoch_is_still_recorded(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last epoch's row follows the last decision, so no step shows it; the episode still diverged
    and its final accuracy was measured on a broken model, so it must say so."""
    original = MorphogeneticEnv._train_epoch

    def poisoned(self: MorphogeneticEnv) -> None:
        if self.epoch == self.epochs - 1:
            with torch.no_grad():
                self.model.conv1.weight.fill_(math.nan)
        original(self)

    monkeypatch.setattr(MorphogeneticEnv, "_train_epoch", poisoned)
    with _one_thread():
        result = run_episode(spec(scenarios=("healthy",), counterfactual_fraction=0.0), 0, dataset)
    assert not any(nonfinite_row(s) for s in result.steps)  # every decision saw healthy training
    assert result.episode["diverged"] is True and result.episode["outcome"] == "diverged"
    assert [m["epoch"] for m in result.episode["key_moments"] if m["event"] == "diverge"] == [EPOCHS - 1]


def test_generate_commits_every_episode_when_one_diverges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`esper generate` with a diverging episode among healthy ones commits all N, marks only that one,
    and the pack validates and answers queries over its NaN rows."""
    diverging(monkeypatch, {1})
    out = tmp_path / "pack"
    argv = ["generate", "--profile", "standard", "--dataset", "synthetic", "--epochs", str(EPOCHS), "--seed", "3",
            "--episodes", "3", "--workers", "1", "--counterfactual", "0.5", "--quiet", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    pack = open_pack(out)
    episodes = {e["episode_id"]: e for e in pack.episodes().to_pylist()}
    assert sorted(episodes) == ["ep-000000", "ep-000001", "ep-000002"]
    assert [episodes[i]["diverged"] for i in sorted(episodes)] == [False, True, False]
    assert episodes["ep-000001"]["outcome"] == "diverged"
    assert pack.manifest.quick_stats.columns["train_loss"].nonfinite_count > 0
    assert main(["validate", str(out)]) == 0
    capsys.readouterr()
    assert main(["query", str(out), "SELECT episode_id, train_loss, red_flags FROM steps "
                 "WHERE list_contains(red_flags, 'non_finite_training')", "--format", "json"]) == 0
    flagged = json.loads(capsys.readouterr().out)
    assert flagged and {r["episode_id"] for r in flagged} == {"ep-000001"}
