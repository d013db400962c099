"""Is it a control problem where *why* matters? Paired strategies per cause, scored by the primary score.

    esper control-check --episodes 60 --seed 1 --json

Episode e gets cause SCENARIOS[e mod 6] (stratified: the same number of episodes per cause) with its
parameters drawn from (seed, e), and is played once per strategy from the same episode seed, so
strategies are compared on identical hosts, data and shuffling (paired differences). Every run is
scored by the episode's primary score (environment/primary_score.py: held-out test accuracy at the
end minus 0.1 x seed parameter-epochs). Strategies:

- `never`: WAIT throughout;
- `heuristic`: heuristic Tamiyo, greedy, blueprint rotation starting at (e // 6) mod 4;
- `conv`, `attention`, `norm`, `depthwise`: that blueprint germinated at `--germinate-at`, trained
  `--train-epochs` epochs, blended, fossilized (policies/experts.schedule_action);
- `heur-conv`, `heur-norm`: the heuristic, always germinating that one blueprint;
- `oracle`: knows the cause: plants its remedy from epoch 1 on the same schedule, waits where none.

Every strategy but the oracle is cause-blind. `control_check_report.py` turns the runs into the
per-cause table and `value_of_knowing_cause` (the per-cause best cause-blind strategy chosen in
hindsight minus the best cause-blind strategy overall, paired by episode). Runs execute on an
engine (generation/engine.py), one episode x strategy per key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pipelines.environment.blueprints import BLUEPRINTS
from pipelines.environment.datasets import Dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv, episode_rng_seed
from pipelines.environment.scenarios import SCENARIOS, make_scenario
from pipelines.experiment.playing import Choose, PlayTask, expert_chooser, never, play_out, policy_chooser
from pipelines.generation.engine import Done, EngineOptions, open_engine
from pipelines.policies.experts import FixedBlueprintHeuristic, schedule_action
from pipelines.policies.heuristic import HeuristicTamiyo
from telemetry import EsperError, load_config

BLUEPRINT_NAMES = tuple(BLUEPRINTS)
STRATEGIES = ("never", "heuristic", *BLUEPRINT_NAMES, "heur-conv", "heur-norm", "oracle")
CAUSE_BLIND = tuple(s for s in STRATEGIES if s != "oracle")


@dataclass(frozen=True)
class CheckSpec:
    """What every run of one control check shares."""

    rng_seed: int = 0
    epochs: int = 25
    dataset: str = "digits_hard"
    data_dir: str | None = None
    germinate_at: int = 4
    train_epochs: int = 3


@dataclass(frozen=True)
class Run:
    episode: int
    strategy: str


def runs_of(episodes: int, strategies: set[str]) -> list[Run]:
    """Every (episode, strategy) pair, in the order of STRATEGIES."""
    return [Run(e, s) for e in range(episodes) for s in STRATEGIES if s in strategies]


def _chooser(spec: CheckSpec, run: Run, cause: str) -> Choose:
    """The strategy as a function of (env, feature row) -> action."""
    if run.strategy == "never":
        return never
    if run.strategy == "oracle":
        return expert_chooser(cause, spec.train_epochs)
    if run.strategy in BLUEPRINT_NAMES:
        return lambda env, row: schedule_action(env, run.strategy, spec.germinate_at, spec.train_epochs)
    rotation = (run.episode // len(SCENARIOS)) % len(BLUEPRINT_NAMES)
    return policy_chooser(HeuristicTamiyo(epsilon=0.0, blueprint_offset=rotation) if run.strategy == "heuristic"
                          else FixedBlueprintHeuristic(epsilon=0.0, blueprint=run.strategy.removeprefix("heur-")))


def play(spec: CheckSpec, run: Run, dataset: Dataset) -> dict[str, Any]:
    """One episode under one strategy -> its primary score and what was done."""
    cause = SCENARIOS[run.episode % len(SCENARIOS)]
    scenario = make_scenario(cause, spec.rng_seed, run.episode)
    env = MorphogeneticEnv(dataset, scenario, load_config("minimal"),
                           rng_seed=episode_rng_seed(spec.rng_seed, run.episode), epochs=spec.epochs)
    start = time.perf_counter()
    score, actions = play_out(env, _chooser(spec, run, cause))
    return {"episode": run.episode, "cause": cause, "strategy": run.strategy, **score.as_dict(),
            "val_accuracy": env.accuracy, "actions": actions, "seconds": time.perf_counter() - start}


class ControlCheckTask(PlayTask):
    """Key i plays runs[i]."""

    def __init__(self, spec: CheckSpec, runs: list[Run]) -> None:
        super().__init__(spec.dataset, spec.data_dir)
        self.spec, self.runs = spec, runs

    def play(self, key: int, dataset: Dataset) -> dict[str, Any]:
        return play(self.spec, self.runs[key], dataset)


def run_check(spec: CheckSpec, runs: list[Run], workers: int,
              engine: EngineOptions | None = None) -> tuple[list[dict[str, Any]], float]:
    """Play every run on the engine; the results in run order and the seconds taken. A run that
    fails stops the check with its error (a partial table would not be paired)."""
    task = ControlCheckTask(spec, runs)
    start = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    for outcome in open_engine(engine or EngineOptions(), workers).run(task, range(len(runs))):
        if not isinstance(outcome, Done):
            run = runs[outcome.key]
            raise EsperError(f"control-check: episode {run.episode} ({run.strategy}) failed: {outcome.error}")
        results[outcome.key] = outcome.value
    return [results[k] for k in sorted(results)], time.perf_counter() - start
