"""The experiment the telemetry exists for: does a richer feature set make a better policy?

    results = run_compare(CompareSpec(replicates=8, episodes=96, eval_per_cause=4), "runs/compare")

A replicate is one whole run of the learning pipeline: its own training pack (run seed `seed + r`,
recorded with the candidate profile so every arm sees the same episodes, sliced by name to its own
features) and its own trained models. Per replicate:

1. the pack (generated, resumable);
2. `seeds` models per learned arm, same network, options and budget: baseline (the baseline
   profile), candidate (the candidate profile), ablation (a named feature selection between them);
3. offline, on the pack's test episodes: agreement with the privileged expert and, where the pack
   has counterfactual labels, with the oracle and the regret of the chosen action; a cause probe
   (how well the arm's features identify the hidden cause).

Then every learned policy of every replicate, and the reference policies (the greedy heuristic, the
privileged expert that knows the cause, never-germinate), play the one shared evaluation set
(evaluation_set.py: stratified by cause, from a seed namespace no pack uses), scored by each
episode's primary score. `analysis.py` turns the per-episode values into the pre-registered
primary measure and its t-interval over replicates; `report.py` writes results.json, report.md and
summary.json. Everything resumes: packs, models and evaluation episodes already done are reused when
they match this run's settings, and `--replicates` may grow between runs (a pilot's replicates are
the first replicates of the full run).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.environment.datasets import WITH_TEST_SPLIT
from pipelines.environment.host import HostCNN
from pipelines.environment.morphogenetic_env import SLOT, EnvOptions
from pipelines.experiment.evaluation_set import REFERENCES, Player, Setting, evaluate, evaluation_set
from pipelines.experiment.report import claim_report_folder
from pipelines.generation.engine import EngineOptions
from pipelines.generation.episode import COUNTERFACTUAL_EPOCHS, GenerationSpec, episode_id
from pipelines.generation.generate import check_spec, generate
from pipelines.policies.learned_policy import LearnedPolicy, prepare
from pipelines.training.train import TARGETS, TrainError, TrainOptions, train_policy
from telemetry import EsperError, load_config, profile_feature_names, profile_names
from telemetry.packs import DEFAULT_SPLITS, MANIFEST_NAME, Pack, file_sha256, open_pack, split_of

ARMS = ("baseline", "candidate", "ablation")
FORMAT = "esper-compare/2"
EVAL_SEED = 0x0E5A1  # the evaluation set's seed: fixed, so every comparison plays the same episodes
MIN_REPLICATES = 2  # a t-interval over replicates needs two


class CompareError(EsperError):
    """Settings or a pack the comparison cannot run with."""


@dataclass(frozen=True)
class CompareSpec:
    baseline: str = "minimal"
    candidate: str = "diagnostic"
    ablation: str = "minimal,gradients"  # base + lifecycle (what every arm needs) + gradient health
    replicates: int = 8
    episodes: int = 96  # in each replicate's training pack
    seeds: int = 1  # models per arm per replicate
    target: str = "expert"
    eval_per_cause: int = 4  # evaluation episodes per cause, shared by every replicate
    dataset: str = "digits_hard"
    data_dir: str | None = None
    epochs: int = 25
    seed: int = 0  # replicate r's pack has run seed seed + r
    workers: int = 1
    engine: EngineOptions = field(default_factory=EngineOptions)
    counterfactual_fraction: float = 0.0
    counterfactual_epochs: int | None = COUNTERFACTUAL_EPOCHS
    train: TrainOptions = field(default_factory=TrainOptions)
    pilot: bool = False

    def check(self) -> None:
        for name in ("baseline", "candidate"):
            if getattr(self, name) not in profile_names():
                raise CompareError(f"--{name} {getattr(self, name)!r}: expected a profile "
                                   f"({', '.join(profile_names())})")
        if self.baseline == self.candidate:
            raise CompareError(f"--baseline and --candidate are both {self.baseline!r}; expected two profiles")
        features = profile_feature_names(HostCNN(3, 10, slots=(SLOT,)), 10)
        lacking = [n for n in features[self.baseline] if n not in set(features[self.candidate])]
        if lacking:  # refused now, not after a whole candidate-profile pack was generated
            raise CompareError(f"--baseline {self.baseline} records {len(lacking)} feature(s) that --candidate "
                               f"{self.candidate} lacks (e.g. {lacking[0]!r}); the candidate's pack must hold both "
                               "arms' features: make the candidate the richer profile")
        if self.target not in TARGETS:
            raise CompareError(f"--target {self.target!r}; expected one of: {', '.join(TARGETS)}")
        if self.target in ("oracle", "advantage") and self.counterfactual_fraction <= 0:
            raise CompareError(f"--target {self.target} learns from counterfactual labels; expected --counterfactual "
                               "> 0 (or --target expert)")
        if self.replicates < MIN_REPLICATES:
            raise CompareError(f"--replicates must be >= {MIN_REPLICATES} (the interval is a t-interval over "
                               f"replicates), got {self.replicates}")
        for name in ("seeds", "eval_per_cause", "workers"):
            if getattr(self, name) < 1:
                raise CompareError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.dataset not in WITH_TEST_SPLIT:
            raise CompareError(f"--dataset {self.dataset} has no held-out test split, which the primary score "
                               f"reads; expected one of {', '.join(WITH_TEST_SPLIT)}")
        self.train.check()
        self.engine.check()
        self._check_packs()

    def _check_packs(self) -> None:
        try:
            for r in range(self.replicates):
                check_spec(self.generation(r), self.episodes, self.workers, self.engine)
        except EsperError as exc:
            raise CompareError(str(exc)) from None
        missing, index = set(DEFAULT_SPLITS), 0  # splits are a hash of the episode id: known before generating
        while missing and index < self.episodes:
            missing.discard(split_of(episode_id(index), DEFAULT_SPLITS))
            index += 1
        if missing:
            raise CompareError(f"--episodes {self.episodes} puts no episode in the {' and '.join(sorted(missing))} "
                               "split(s), which training and evaluation need; generate more episodes")

    def generation(self, replicate: int) -> GenerationSpec:
        return GenerationSpec(config=load_config(self.candidate), dataset=self.dataset, data_dir=self.data_dir,
                              rng_seed=self.seed + replicate, epochs=self.epochs,
                              counterfactual_fraction=self.counterfactual_fraction,
                              counterfactual_epochs=self.counterfactual_epochs)

    def design(self) -> dict[str, Any]:
        """What replicates of one comparison share: every setting but their number and the mode."""
        return {k: v for k, v in asdict(self).items() if k not in ("replicates", "pilot", "workers", "engine")}


Progress = Callable[[str], None]


def run_compare(spec: CompareSpec, out: str | Path, say: Progress = print,
                show_progress: bool = True) -> dict[str, Any]:
    """Every setting is checked before anything is written under `out`."""
    spec.check()
    out = Path(out)
    claim_report_folder(out, spec.design())
    replicates = []
    for r in range(spec.replicates):
        say(f"[replicate {r + 1}/{spec.replicates}] pack, {len(ARMS) * spec.seeds} models, offline")
        replicates.append(_replicate(spec, r, out, show_progress))
    episodes = evaluation_set(spec.eval_per_cause, EVAL_SEED)
    players = [Player(name) for name in REFERENCES] + [
        Player(f"r{rep['index']}/{name}", str(out / f"replicate-{rep['index']}" / "models" / name), sha)
        for rep in replicates for names in rep["models"].values() for name, sha in names.items()]
    say(f"[evaluation] {len(players)} policies x {len(episodes)} shared episodes")
    setting = Setting(load_config(spec.candidate), spec.dataset, spec.data_dir, spec.epochs, EnvOptions())
    online = evaluate(setting, players, episodes, out / "evaluation.jsonl", spec.workers, spec.engine)
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**asdict(spec)},
        "evaluation_set": {"seed": EVAL_SEED, "per_cause": spec.eval_per_cause,
                           "episodes": [e.describe() for e in episodes]},
        "replicates": replicates,
        "online": {name: {str(i): _kept(v) for i, v in by_episode.items()} for name, by_episode in online.items()},
    }


def _kept(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("score", "test_accuracy", "cost", "param_epochs", "actions")}


# ---- one replicate -------------------------------------------------------------------------------

def _replicate(spec: CompareSpec, r: int, out: Path, show_progress: bool) -> dict[str, Any]:
    folder = out / f"replicate-{r}"
    path = folder / "pack"
    generate(spec.generation(r), path, spec.episodes, workers=spec.workers, resume=(path / MANIFEST_NAME).exists(),
             show_progress=show_progress, engine=spec.engine)
    pack = open_pack(path)
    models = {arm: [_model(spec, pack, arm, s, folder) for s in range(spec.seeds)] for arm in ARMS}
    return {"index": r, "seed": spec.seed + r, "pack": _pack_facts(pack),
            "models": {arm: {m.name: m.weights_sha256 for m in models[arm]} for arm in ARMS},
            "features": {arm: len(models[arm][0].feature_names) for arm in ARMS},
            "offline": _offline(pack, models)}


def _pack_facts(pack: Pack) -> dict[str, Any]:
    episodes = pack.episodes(columns=["episode_id", "split", "seed"])
    splits: dict[str, int] = defaultdict(int)
    for split in episodes.column("split").to_pylist():
        splits[split] += 1
    return {"path": str(pack.path), "episodes": episodes.num_rows, "episodes_per_split": dict(splits),
            "steps": pack.manifest.quick_stats.steps, "manifest_sha256": file_sha256(pack.path / MANIFEST_NAME),
            "env_seeds": episodes.column("seed").to_pylist()}


def _model(spec: CompareSpec, pack: Pack, arm: str, seed: int, folder: Path) -> LearnedPolicy:
    """Train one arm's seed, or reuse the model an interrupted run saved with the same settings."""
    directory = folder / "models" / f"{arm}-s{seed}"
    features = getattr(spec, arm)
    selection = features.split(",") if "," in features else features
    if (directory / "policy.json").exists():
        policy = LearnedPolicy.load(directory)
        wanted = {"features": selection, "target": spec.target, "seed": seed, "options": asdict(spec.train),
                  "pack": file_sha256(pack.path / MANIFEST_NAME)}
        found = {"features": policy.meta.get("features"), "target": policy.meta.get("target"),
                 "seed": policy.meta.get("training", {}).get("seed"),
                 "options": {k: policy.meta.get("training", {}).get(k) for k in asdict(spec.train)},
                 "pack": policy.meta.get("provenance", {}).get("pack_manifest_sha256")}
        if found != wanted:
            raise CompareError(f"{directory}: holds a model trained with other settings; choose another --out")
    else:
        try:
            result = train_policy(pack, selection, spec.target, rng_seed=seed, options=spec.train)
        except (TrainError, EsperError) as exc:
            raise CompareError(f"replicate pack {pack.path}: {exc}") from None
        policy = result.policy
        policy.save(directory)  # records weights_sha256, which names the policy in the evaluation
    policy.name = directory.name
    return policy


# ---- offline -------------------------------------------------------------------------------------

def _offline(pack: Pack, models: dict[str, list[LearnedPolicy]]) -> dict[str, Any]:
    """Per arm, per test episode (means over the arm's seeds): agreement with the expert; with the
    oracle and regret where the pack has counterfactual labels; and the cause probe."""
    names = sorted({n for arm in ARMS for m in models[arm] for n in m.feature_names})
    test = pack.steps(split="test", columns=[*names, "episode_id", "step", "action_mask", "expert_action",
                                              "best_actions", "counterfactual"])
    out: dict[str, Any] = {}
    for arm in ARMS:
        scores = [_choice_scores(m, test, pack) for m in models[arm]]
        out[arm] = {measure: _mean_over_seeds([s[measure] for s in scores]) for measure in scores[0]}
        out[arm]["cause_probe"] = _cause_probe(pack, models[arm][0])
    return out


def _choice_scores(policy: LearnedPolicy, test: pa.Table, pack: Pack) -> dict[str, dict[str, float]]:
    """Per test episode: share of steps where the policy picks the expert's action; where branched,
    share picking one of the oracle's best actions and the mean regret (points of value)."""
    actions = list(pack.manifest.actions)
    chosen = [actions[i] for i in policy.choose(test, str(pack.path))]
    episodes = test.column("episode_id").to_pylist()
    expert, best = test.column("expert_action").to_pylist(), test.column("best_actions").to_pylist()
    rollouts = test.column("counterfactual").to_pylist()
    found: dict[str, dict[str, list[float]]] = {"expert_agreement": defaultdict(list),
                                                 "oracle_agreement": defaultdict(list), "regret": defaultdict(list)}
    for e, choice, exp, tie, values in zip(episodes, chosen, expert, best, rollouts, strict=True):
        found["expert_agreement"][e].append(float(choice == exp))
        if tie is not None:
            value = {v["action"]: v["value"] for v in values}
            found["oracle_agreement"][e].append(float(choice in tie))
            found["regret"][e].append(max(value.values()) - value[choice])
    return {measure: {e: float(np.mean(v)) for e, v in sorted(by.items())} for measure, by in found.items() if by}


def _cause_probe(pack: Pack, policy: LearnedPolicy) -> dict[str, float]:
    """Per test episode, the share of its steps whose cause a multinomial logistic regression on the
    arm's features (fitted on train-split steps, standardised as the policy's) names correctly."""
    from sklearn.linear_model import LogisticRegression

    cause = dict(zip(*(pack.episodes(columns=["episode_id", "scenario"]).column(c).to_pylist()
                       for c in ("episode_id", "scenario")), strict=True))
    data = {}
    for split in ("train", "test"):
        steps = pack.steps(split=split, columns=[*policy.feature_names, "episode_id"])
        x = prepare(policy.standardize(steps, str(pack.path))).numpy()
        episodes = steps.column("episode_id").to_pylist()
        data[split] = (x, np.array([cause[e] for e in episodes]), episodes)
    model = LogisticRegression(max_iter=2000)
    model.fit(data["train"][0], data["train"][1])
    x, truth, episodes = data["test"]
    correct: dict[str, list[float]] = defaultdict(list)
    for episode, ok in zip(episodes, model.predict(x) == truth, strict=True):
        correct[episode].append(float(ok))
    return {e: float(np.mean(v)) for e, v in sorted(correct.items())}


def _mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    return {e: float(np.mean([seed[e] for seed in per_seed])) for e in sorted(per_seed[0])}

