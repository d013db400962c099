"""The comparison's shared evaluation set: stratified episodes from a seed namespace no pack uses.

Every replicate's policies, and the reference policies, play the same episodes: episode e has cause
SCENARIOS[e mod 6] (the same number of episodes per cause), scenario parameters and an environment
seed drawn from `[seed, e, EVAL_STREAM, tag]`. Packs draw theirs from `[run seed, e]` and `[run seed,
e, stream]`; numpy pads a seed sequence's entropy with zero words, so the non-zero fourth word keeps
the two namespaces apart whatever the run seeds: no evaluation episode is an episode any training
pack (or DAgger roll-in) holds, and a replicate's evaluation is never the next one's training data.

Playing is direct (no pack is written): the environment runs with the candidate's profile, so every
arm's features are in the row, and each run returns the episode's primary score
(environment/primary_score.py) with what was done. `evaluate` runs the (policy, episode) pairs still
missing on an engine and appends each result to a JSON-lines file as it arrives, so an interrupted
comparison resumes without playing any episode twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.environment.datasets import Dataset
from pipelines.environment.morphogenetic_env import EnvOptions, MorphogeneticEnv
from pipelines.environment.scenarios import SCENARIOS, Scenario, scenario_from
from pipelines.experiment.playing import Choose, PlayTask, expert_chooser, never, play_out, policy_chooser
from pipelines.generation.engine import Done, EngineOptions, open_engine
from pipelines.generation.episode import load_policy
from pipelines.policies.heuristic import HeuristicTamiyo
from telemetry import EsperError, TelemetryConfig

EVAL_STREAM = 0x5E7E7A1  # third word of every evaluation seed sequence
ENV_TAG, SCENARIO_TAG = 0xE1, 0x5C  # fourth words: non-zero, so never a pack's padded sequence
REFERENCES = ("never", "heuristic", "expert")


@dataclass(frozen=True)
class EvalEpisode:
    index: int
    cause: str
    env_seed: int
    scenario: Scenario

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "cause": self.cause, "env_seed": self.env_seed,
                "scenario": self.scenario.params()}


def evaluation_set(per_cause: int, seed: int) -> list[EvalEpisode]:
    """`per_cause` episodes of each cause, causes in rotation."""
    out = []
    for e in range(per_cause * len(SCENARIOS)):
        cause = SCENARIOS[e % len(SCENARIOS)]
        env_seed = int(np.random.SeedSequence([seed, e, EVAL_STREAM, ENV_TAG]).generate_state(1)[0])
        out.append(EvalEpisode(e, cause, env_seed, scenario_from(cause, [seed, e, EVAL_STREAM, SCENARIO_TAG])))
    return out


@dataclass(frozen=True)
class Player:
    """Who chooses: a reference policy by name, or a saved learned policy (directory, weights sha256)."""

    name: str  # "never", "heuristic", "expert", or a learned policy's label in the comparison
    directory: str | None = None
    sha256: str | None = None


def _chooser(player: Player, episode: EvalEpisode) -> Choose:
    if player.directory is not None:
        return policy_chooser(load_policy(player.directory, player.sha256).for_episode())  # a GRU starts empty
    if player.name == "never":
        return never
    if player.name == "expert":
        return expert_chooser(episode.cause)
    if player.name == "heuristic":
        return policy_chooser(HeuristicTamiyo(epsilon=0.0, blueprint_offset=(episode.index // len(SCENARIOS)) % 4))
    raise EsperError(f"unknown reference policy {player.name!r}; expected one of {', '.join(REFERENCES)}")


@dataclass(frozen=True)
class Setting:
    """What every evaluation run shares."""

    config: TelemetryConfig
    dataset: str
    data_dir: str | None
    epochs: int
    options: EnvOptions


def play(setting: Setting, player: Player, episode: EvalEpisode, dataset: Dataset) -> dict[str, Any]:
    """One evaluation episode under one player -> its primary score and what was done."""
    env = MorphogeneticEnv(dataset, episode.scenario, setting.config, rng_seed=episode.env_seed,
                           epochs=setting.epochs, options=setting.options)
    start = time.perf_counter()
    score, actions = play_out(env, _chooser(player, episode))
    return {"policy": player.name, "sha256": player.sha256, "episode": episode.index, "cause": episode.cause,
            **score.as_dict(), "actions": actions, "seconds": time.perf_counter() - start}


class EvalTask(PlayTask):
    """Key i plays runs[i]."""

    def __init__(self, setting: Setting, runs: list[tuple[Player, EvalEpisode]]) -> None:
        super().__init__(setting.dataset, setting.data_dir)
        self.setting, self.runs = setting, runs

    def play(self, key: int, dataset: Dataset) -> dict[str, Any]:
        return play(self.setting, *self.runs[key], dataset)


def evaluate(setting: Setting, players: Iterable[Player], episodes: list[EvalEpisode], log: Path,
             workers: int, engine: EngineOptions) -> dict[str, dict[int, dict[str, Any]]]:
    """Every player on every episode: player name -> episode index -> result. Results already in `log`
    for the same player and weights are reused; the rest run now and are appended as they finish."""
    players = list(players)
    done = _logged(log, {p.name: p.sha256 for p in players})
    runs = [(p, e) for p in players for e in episodes if e.index not in done.get(p.name, {})]
    if runs:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            if fh.tell() and not log.read_bytes().endswith(b"\n"):  # a line a kill cut short stays alone
                fh.write("\n")
            for outcome in open_engine(engine, workers).run(EvalTask(setting, runs), range(len(runs))):
                if not isinstance(outcome, Done):
                    player, episode = runs[outcome.key]
                    raise EsperError(f"evaluation episode {episode.index} ({player.name}) failed: {outcome.error}")
                fh.write(json.dumps(outcome.value, allow_nan=False) + "\n")
                fh.flush()
                done.setdefault(outcome.value["policy"], {})[outcome.value["episode"]] = outcome.value
    wanted = {e.index for e in episodes}
    return {p.name: {i: r for i, r in sorted(done[p.name].items()) if i in wanted} for p in players}


def _logged(log: Path, players: dict[str, str | None]) -> dict[str, dict[int, dict[str, Any]]]:
    """Complete lines of an earlier run whose player is still wanted with the same weights (a line cut
    by a kill is dropped and played again)."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    if not log.exists():
        return found
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and result.get("policy") in players and \
                result.get("sha256") == players[result["policy"]]:
            found.setdefault(result["policy"], {})[int(result["episode"])] = result
    return found
