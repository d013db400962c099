"""Do the decisions matter? Fixed strategies per scenario, final accuracy, paired gains with 95% CIs.

    python -m pipelines.experiment.control_check --episodes 30

Episode e gets scenario e mod 6 of the mix (a stratified sample of the uniform default mix, so every
cause has the same number of episodes) with its parameters drawn from (seed, e), and is then played
once per strategy from the same episode seed, so strategies are compared on identical hosts, data
and shuffling (paired differences). Strategies:

- `never`: WAIT throughout;
- `heuristic`: heuristic Tamiyo, greedy (the behaviour policy of `esper generate` without exploration);
- `schedule`: germinate at `--germinate-at`, ADVANCE to TRAINING at once, ADVANCE to BLENDING after
  `--train-epochs` epochs, FOSSILIZE when the ramp completes; blueprints in rotation by episode;
- `conv`, `attention`, `norm`, `depthwise`: the same schedule with one blueprint throughout.

It prints mean final validation accuracy per (scenario, strategy), the best strategy per scenario,
and each germinating strategy's mean gain over `never` with a 95% t-interval, plus the gain of the
best strategy per scenario chosen in hindsight (how much a policy that infers the cause could win).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
from scipy import stats

from pipelines.environment.actions import Action
from pipelines.environment.blueprints import BLUEPRINTS
from pipelines.environment.datasets import load_dataset
from pipelines.environment.morphogenetic_env import MorphogeneticEnv, episode_rng_seed
from pipelines.environment.scenarios import SCENARIOS, make_scenario
from pipelines.policies.heuristic import HeuristicTamiyo
from telemetry import SeedStage, load_config

BLUEPRINT_NAMES = tuple(BLUEPRINTS)
STRATEGIES = ("never", "heuristic", "schedule", *BLUEPRINT_NAMES)


@dataclass(frozen=True)
class Job:
    episode: int
    strategy: str
    rng_seed: int
    epochs: int
    dataset: str
    data_dir: str | None
    germinate_at: int
    train_epochs: int
    scenarios: tuple[str, ...]


def schedule_action(env: MorphogeneticEnv, blueprint: str, germinate_at: int, train_epochs: int) -> Action:
    """The fixed germinate -> train -> blend -> fossilize schedule."""
    slot, mask = env.slot, env.valid_mask()
    if env.epoch == germinate_at and mask[Action.germinate(blueprint)]:
        return Action.germinate(blueprint)
    if slot.stage == SeedStage.GERMINATED:
        return Action.ADVANCE
    if slot.stage == SeedStage.TRAINING and slot.lifecycle.epochs_in_stage >= train_epochs:
        return Action.ADVANCE
    if mask[Action.FOSSILIZE]:
        return Action.FOSSILIZE
    return Action.WAIT


def _rotation(job: Job) -> int:
    """Where episode e starts the blueprint rotation: (e // number of scenarios) mod 4, so the
    episodes of each cause cycle through every blueprint (e mod 4 would tie causes to blueprints)."""
    return (job.episode // len(job.scenarios)) % len(BLUEPRINT_NAMES)


def play(job: Job) -> tuple[int, str, str, float]:
    """One episode under one strategy -> (episode, scenario, strategy, final val accuracy)."""
    torch.set_num_threads(1)
    dataset = _dataset(job.dataset, job.data_dir)
    scenario = make_scenario(job.scenarios[job.episode % len(job.scenarios)], job.rng_seed, job.episode)
    rng_seed = episode_rng_seed(job.rng_seed, job.episode)
    env = MorphogeneticEnv(dataset, scenario, load_config("minimal"), rng_seed=rng_seed, epochs=job.epochs)
    row = env.reset()
    blueprint = (BLUEPRINT_NAMES[_rotation(job)] if job.strategy == "schedule"
                 else job.strategy)
    tamiyo = HeuristicTamiyo(epsilon=0.0, blueprint_offset=_rotation(job))
    unused = random.Random(0)
    done = False
    while not done:
        if job.strategy == "never":
            action = Action.WAIT
        elif job.strategy == "heuristic":
            action = tamiyo.act(env.policy_view(row), list(env.valid_mask()), unused).action
        else:
            action = schedule_action(env, blueprint, job.germinate_at, job.train_epochs)
        row, _, done, info = env.step(action)
    env.close()
    return job.episode, scenario.name, job.strategy, info["val_accuracy"]


_DATASETS: dict[tuple[str, str | None], object] = {}


def _dataset(name: str, data_dir: str | None):
    """One load per worker process."""
    key = (name, data_dir)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(name, data_dir)
    return _DATASETS[key]


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the two ends of its 95% t-interval."""
    m = float(values.mean())
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return m, m - half, m + half


Finals = dict[int, dict[str, float]]  # episode -> strategy -> final validation accuracy


def report(results: list[tuple[int, str, str, float]]) -> str:
    final: Finals = defaultdict(dict)
    cause: dict[int, str] = {}
    for episode, scenario, strategy, acc in results:
        final[episode][strategy] = acc
        cause[episode] = scenario
    names = [s for s in STRATEGIES if s in results_strategies(results)]
    best = _best_per_scenario(final, cause, names)
    lines = [_scenario_table(final, cause, best, names), "",
             "gain over never (accuracy points, mean [95% CI], n episodes):"]
    for strategy in names[1:]:
        lines.append(_gain_line(strategy, [final[e][strategy] - final[e]["never"] for e in sorted(final)]))
    hindsight = [final[e][best[cause[e]]] - final[e]["never"] for e in sorted(final)]
    lines.append(_gain_line("best per scenario", hindsight)
                 + "  (strategy chosen in hindsight per scenario; optimistic)")
    return "\n".join(lines)


def results_strategies(results: list[tuple[int, str, str, float]]) -> set[str]:
    return {strategy for _, _, strategy, _ in results}


def _gain_line(label: str, gains: list[float]) -> str:
    m, lo, hi = mean_ci(np.array(gains))
    return f"  {label:<22} {m:+6.2f} [{lo:+6.2f}, {hi:+6.2f}]  n={len(gains)}"


def _means(final: Finals, episodes: list[int], names: list[str]) -> dict[str, float]:
    return {s: float(np.mean([final[e][s] for e in episodes])) for s in names}


def _best_per_scenario(final: Finals, cause: dict[int, str], names: list[str]) -> dict[str, str]:
    best = {}
    for scenario in set(cause.values()):
        means = _means(final, [e for e in final if cause[e] == scenario], names)
        best[scenario] = max(means, key=means.get)
    return best


def _scenario_table(final: Finals, cause: dict[int, str], best: dict[str, str], names: list[str]) -> str:
    """Mean final accuracy per (scenario, strategy), and the best strategy's paired gain over never."""
    head = (f"{'scenario':<20} {'n':>3} " + " ".join(f"{s:>9}" for s in names)
            + "  best       best - never [95% CI]")
    rows = [head, "-" * len(head)]
    for scenario in [s for s in SCENARIOS if s in cause.values()]:
        eps = [e for e in final if cause[e] == scenario]
        means = _means(final, eps, names)
        m, lo, hi = mean_ci(np.array([final[e][best[scenario]] - final[e]["never"] for e in eps]))
        rows.append(f"{scenario:<20} {len(eps):>3} " + " ".join(f"{means[s]:9.2f}" for s in names)
                    + f"  {best[scenario]:<10} {m:+6.2f} [{lo:+6.2f}, {hi:+6.2f}]")
    return "\n".join(rows)


def run(episodes: int, strategies: set[str], job: Job, workers: int) -> tuple[str, float, int]:
    """Play every (episode, strategy) pair; returns the report, the seconds taken and the runs played."""
    jobs = [Job(e, s, job.rng_seed, job.epochs, job.dataset, job.data_dir, job.germinate_at, job.train_epochs,
                job.scenarios) for e in range(episodes) for s in STRATEGIES if s in strategies]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(play, jobs, chunksize=1))
    return report(results), time.perf_counter() - start, len(jobs)
