"""The experiment the telemetry exists for: does a richer feature set make a better policy?

    results = run_compare(CompareSpec(baseline="minimal", candidate="diagnostic", episodes=200, seeds=3),
                          "runs/compare")

Phases (the design's migration plan, 1-5), every one on the same episodes for both feature sets:

1. one pack recorded with the candidate profile (generated, or reused with `pack=`), so the baseline
   sees exactly the candidate's episodes, sliced by name to the baseline profile's features;
2. K seeds of the same MLP, options and budget per arm, trained on the pack's train split;
3. offline, on the held-out test episodes: agreement with the counterfactual oracle's best action,
   the regret of the chosen action (rollout accuracy of the best action minus the chosen one's), and
   how well each feature set identifies the hidden scenario cause (a logistic-regression probe);
4. online: each trained policy, the greedy heuristic and never-germinate drive the same fresh
   episodes (new seeds, the pack's scenario mix and settings); final accuracy, seeds fossilized,
   parameters added;
5. `report.write_report` turns the results into report.md, plots and results.json.

Every interval resamples episodes (see `bootstrap`), and arms are compared per episode (paired): an
arm's value on an episode is the mean over its K seeds. Each phase writes under the report folder
and an interrupted run picks up where it stopped (generation resumes; trained models are reused
when they match this run's settings).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.environment.host import HostCNN
from pipelines.environment.morphogenetic_env import SLOT
from pipelines.experiment.bootstrap import RESAMPLES, SEED, bootstrap_ci
from pipelines.experiment.report import claim_report_folder
from pipelines.generation.engine import EngineOptions
from pipelines.generation.episode import COUNTERFACTUAL_EPOCHS, GenerationSpec, episode_id
from pipelines.generation.generate import check_spec, generate
from pipelines.generation.roll_in import roll_in_spec
from pipelines.policies.learned_policy import LearnedPolicy, prepare
from pipelines.training.metrics import balanced_accuracy
from pipelines.training.train import TARGETS, TrainError, TrainOptions, train_policy
from telemetry import EsperError, load_config, profile_feature_names, profile_names
from telemetry.packs import DEFAULT_SPLITS, MANIFEST_NAME, Pack, file_sha256, open_pack, split_of

ARMS = ("baseline", "candidate")
REFERENCES = ("heuristic", "never")
FORMAT = "esper-compare/1"


class CompareError(EsperError):
    """Settings or a pack the comparison cannot run with."""


# How the training pack is generated: with `pack=` these are the pack's, and a value given that
# differs is refused (it would be recorded, but change nothing). CompareSpec field -> GenerationSpec field.
PACK_SETTINGS = {"dataset": "dataset", "epochs": "epochs", "seed": "rng_seed",
                 "counterfactual_fraction": "counterfactual_fraction", "counterfactual_epochs": "counterfactual_epochs"}
GENERATION_DEFAULTS = {"dataset": "digits_hard", "epochs": 25, "seed": 0, "counterfactual_fraction": 0.5,
                       "counterfactual_epochs": COUNTERFACTUAL_EPOCHS}  # None: rollouts to the episode's end


@dataclass(frozen=True)
class CompareSpec:
    baseline: str = "minimal"
    candidate: str = "diagnostic"
    episodes: int | None = 200  # in the training pack, when it is generated (None with `pack=`)
    seeds: int = 3  # models per arm
    target: str = "oracle"
    online_episodes: int = 40  # fresh episodes each policy drives
    dataset: str | None = None  # None: GENERATION_DEFAULTS, or the pack's with `pack=` (PACK_SETTINGS)
    data_dir: str | None = None
    epochs: int | None = None
    seed: int | None = None
    workers: int = 1
    engine: EngineOptions = field(default_factory=EngineOptions)  # where the packs' episodes run
    counterfactual_fraction: float | None = None
    counterfactual_epochs: int | None = None
    train: TrainOptions = field(default_factory=TrainOptions)

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
        for name in ("seeds", "online_episodes", "workers"):
            if getattr(self, name) < 1:
                raise CompareError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        self.train.check()
        self.engine.check()

    def with_defaults(self) -> CompareSpec:
        """Settings not given take the generation defaults (no pack to take them from)."""
        return replace(self, **{k: v for k, v in GENERATION_DEFAULTS.items() if getattr(self, k) is None})

    def generation(self) -> GenerationSpec:
        return GenerationSpec(config=load_config(self.candidate), dataset=self.dataset, data_dir=self.data_dir,
                              rng_seed=self.seed, epochs=self.epochs,
                              counterfactual_fraction=self.counterfactual_fraction,
                              counterfactual_epochs=self.counterfactual_epochs)


Progress = Callable[[str], None]


def run_compare(spec: CompareSpec, out: str | Path, pack: str | Path | None = None,
                say: Progress = print, show_progress: bool = True) -> dict[str, Any]:
    """Every setting and a given pack are checked before anything is written under `out`."""
    spec.check()
    out = Path(out)
    given = _given_pack(spec, pack) if pack is not None else None
    spec = _settled(spec, given) if given is not None else _checked_generation(spec.with_defaults())
    claim_report_folder(out)
    say(f"[1/5] pack: {pack or out / 'pack'}")
    training = given or _generated_pack(spec, out, show_progress)
    generation = _generation(training)
    say(f"[2/5] training {spec.seeds} seed(s) x {len(ARMS)} arms on {training.path}")
    models = {arm: [_model(spec, training, arm, s, out) for s in range(spec.seeds)] for arm in ARMS}
    say("[3/5] offline evaluation on the test split")
    offline = _offline(training, models)
    say(f"[4/5] online: {2 * spec.seeds + 2} policies x {spec.online_episodes} fresh episodes")
    online = _online(spec, training, generation, models, out, show_progress)
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**asdict(spec), "pack": str(training.path)},
        "pack": _pack_facts(training),
        "bootstrap": {"resamples": RESAMPLES, "seed": SEED, "confidence": 0.95,
                      "method": "percentile bootstrap over episodes: rng = numpy.random.default_rng(seed); "
                                "index = rng.integers(0, n, (resamples, n)); bounds = percentiles 2.5 and "
                                "97.5 of values[index].mean(axis=1)"},
        "arms": {arm: {"features": getattr(spec, arm), "n_features": len(models[arm][0].feature_names),
                       "models": [m.name for m in models[arm]]} for arm in ARMS},
        "offline": offline,
        "online": online,
    }


# ---- phase 1: the pack ---------------------------------------------------------------------------

def _checked_generation(spec: CompareSpec) -> CompareSpec:
    if spec.episodes is None or spec.episodes < 1:
        given = "missing" if spec.episodes is None else f"{spec.episodes}"
        raise CompareError(f"--episodes is {given}; expected >= 1 episodes to generate the pack, or --pack "
                           "to reuse one")
    try:
        check_spec(spec.generation(), spec.episodes, spec.workers, spec.engine)
    except EsperError as exc:
        raise CompareError(str(exc)) from None
    missing, index = set(DEFAULT_SPLITS), 0  # splits are a hash of the episode id: known before generating
    while missing and index < spec.episodes:
        missing.discard(split_of(episode_id(index), DEFAULT_SPLITS))
        index += 1
    if missing:
        raise CompareError(f"--episodes {spec.episodes} puts no episode in the {' and '.join(sorted(missing))} "
                           "split(s), which training and evaluation need; generate more episodes")
    return spec


def _generated_pack(spec: CompareSpec, out: Path, show_progress: bool) -> Pack:
    path = out / "pack"
    generate(spec.generation(), path, spec.episodes, workers=spec.workers,
             resume=(path / MANIFEST_NAME).exists(), show_progress=show_progress, engine=spec.engine)
    return _checked_pack(spec, open_pack(path))


def _given_pack(spec: CompareSpec, pack: str | Path) -> Pack:
    return _checked_pack(spec, open_pack(pack))


def _settled(spec: CompareSpec, pack: Pack) -> CompareSpec:
    """The spec with the pack's generation settings; a given setting that differs is refused, as it
    would be recorded without changing anything (replicates that differed in name only)."""
    generation = _generation(pack)
    used = {name: generation.get(key) for name, key in PACK_SETTINGS.items()}
    for name, value in used.items():
        given = getattr(spec, name)
        if given is not None and given != value:
            flag = "--" + {"counterfactual_fraction": "counterfactual"}.get(name, name).replace("_", "-")
            raise CompareError(f"{flag} {given} conflicts with --pack {pack.path}, generated with {value}; leave "
                               f"{flag} out to use the pack's (or generate a pack with it)")
    episodes = pack.manifest.quick_stats.episodes
    if spec.episodes is not None and spec.episodes != episodes:
        raise CompareError(f"--episodes {spec.episodes} conflicts with --pack {pack.path}, which holds {episodes}; "
                           "leave --episodes out with --pack")
    return replace(spec, episodes=episodes, **used)


def _checked_pack(spec: CompareSpec, opened: Pack) -> Pack:
    have = set(opened.manifest.feature_schema.index)
    for arm in ARMS:
        wanted = opened.manifest.profiles.get(getattr(spec, arm))
        if wanted is None or not set(wanted) <= have:
            recorded = opened.manifest.telemetry_config.profile_name
            raise CompareError(f"{opened.path}: recorded with profile {recorded!r}, which does not hold the {arm} "
                               f"profile {getattr(spec, arm)!r}; expected a pack recorded with --profile "
                               f"{spec.candidate}")
    if spec.target in ("oracle", "advantage") and _no_oracle_labels(opened, TARGETS[spec.target]):
        raise CompareError(f"{opened.path}: no step carries a counterfactual label, so --target {spec.target} has "
                           "nothing to learn; generate with --counterfactual > 0 or use --target heuristic")
    return opened


def _no_oracle_labels(pack: Pack, column: str) -> bool:
    labels = pack.steps(columns=[column]).column(column)
    return labels.null_count == len(labels)


def _generation(pack: Pack) -> dict[str, Any]:
    generation = (pack.manifest.provenance.model_extra or {}).get("generation")
    if not isinstance(generation, dict):
        raise CompareError(f"{pack.path}: not written by `esper generate`, so fresh episodes cannot reproduce its "
                           "settings; expected a generated pack")
    return generation


def _pack_facts(pack: Pack) -> dict[str, Any]:
    episodes = pack.episodes(columns=["episode_id", "split"])
    splits = defaultdict(int)
    for split in episodes.column("split").to_pylist():
        splits[split] += 1
    return {"path": str(pack.path), "profile": pack.manifest.telemetry_config.profile_name,
            "episodes": episodes.num_rows, "episodes_per_split": dict(splits),
            "steps": pack.manifest.quick_stats.steps, "manifest_sha256": file_sha256(pack.path / MANIFEST_NAME),
            "generation": _generation(pack)}


# ---- phase 2: training ---------------------------------------------------------------------------

def _model(spec: CompareSpec, pack: Pack, arm: str, seed: int, out: Path) -> LearnedPolicy:
    """Train one arm's seed, or reuse the model an interrupted run saved with the same settings."""
    directory = out / "models" / f"{arm}-s{seed}"
    features = getattr(spec, arm)
    if (directory / "policy.json").exists():
        policy = LearnedPolicy.load(directory)
        wanted = {"features": features, "target": spec.target, "seed": seed, "options": asdict(spec.train),
                  "pack": file_sha256(pack.path / MANIFEST_NAME)}
        found = {"features": policy.meta.get("features"), "target": policy.meta.get("target"),
                 "seed": policy.meta.get("training", {}).get("seed"),
                 "options": {k: policy.meta.get("training", {}).get(k) for k in asdict(spec.train)},
                 "pack": policy.meta.get("provenance", {}).get("pack_manifest_sha256")}
        if found != wanted:
            raise CompareError(f"{directory}: holds a model trained with other settings; choose another --out")
        return policy
    try:
        result = train_policy(pack, features, spec.target, rng_seed=seed, options=spec.train)
    except TrainError as exc:
        raise CompareError(str(exc)) from None
    result.policy.save(directory)
    result.policy.name = directory.name
    return result.policy


# ---- phase 3: offline ----------------------------------------------------------------------------

def _offline(pack: Pack, models: dict[str, list[LearnedPolicy]]) -> dict[str, Any]:
    names = sorted({n for arm in ARMS for m in models[arm] for n in m.feature_names})
    test = pack.steps(split="test", columns=[*names, "episode_id", "step", "action_mask", "best_actions",
                                              "counterfactual"])
    labelled = test.column("best_actions").is_valid()
    per_model = {m.name: _oracle_scores(m, test, labelled, pack) for arm in ARMS for m in models[arm]}
    agreement = {arm: _mean_over_seeds([per_model[m.name]["agreement"] for m in models[arm]]) for arm in ARMS}
    regret = {arm: _mean_over_seeds([per_model[m.name]["regret"] for m in models[arm]]) for arm in ARMS}
    probe = {arm: _cause_probe(pack, models[arm][0]) for arm in ARMS}
    return {
        "test_steps_with_oracle_label": int(pc.sum(labelled).as_py() or 0),
        "models": {m.name: {**per_model[m.name], "evaluation": m.meta.get("evaluation")}
                   for arm in ARMS for m in models[arm]},
        "oracle_agreement": _arms_and_difference(agreement),
        "regret": _arms_and_difference(regret),
        "cause_probe": {**_arms_and_difference({a: probe[a]["by_episode"] for a in ARMS}),
                        "balanced_accuracy": {a: probe[a]["balanced_accuracy"] for a in ARMS},
                        "classes": probe[ARMS[0]]["classes"]},
    }


def _oracle_scores(policy: LearnedPolicy, test: pa.Table, labelled: pa.ChunkedArray,
                   pack: Pack) -> dict[str, dict[str, float]]:
    """Per test episode: share of labelled steps where the policy picks one of the oracle's best actions
    (a tie set), and the mean regret in points of value of the policy's choice under the same rollouts.
    The policy chooses at every step (a GRU reads each episode's rows so far), scored where labelled."""
    actions = list(pack.manifest.actions)
    every = pa.array(policy.choose(test, str(pack.path)), pa.int64())
    labelled = test.filter(labelled).append_column("chosen", pa.chunked_array([every]).filter(labelled))
    chosen = labelled.column("chosen").to_pylist()
    agreement: dict[str, list[float]] = defaultdict(list)
    regret: dict[str, list[float]] = defaultdict(list)
    rows = zip(labelled.column("episode_id").to_pylist(), labelled.column("best_actions").to_pylist(),
               labelled.column("counterfactual").to_pylist(), chosen, strict=True)
    for episode, best, rollouts, choice in rows:
        value = {r["action"]: r["value"] for r in rollouts}
        agreement[episode].append(float(actions[choice] in best))
        regret[episode].append(max(value.values()) - value[actions[choice]])
    return {"agreement": {e: float(np.mean(v)) for e, v in sorted(agreement.items())},
            "regret": {e: float(np.mean(v)) for e, v in sorted(regret.items())}}


def _cause_probe(pack: Pack, policy: LearnedPolicy) -> dict[str, Any]:
    """How well the arm's features identify the hidden scenario: a multinomial logistic regression on
    train-split steps (features standardised as the policy's), scored on test-split steps."""
    from sklearn.linear_model import LogisticRegression

    cause = dict(zip(*(pack.episodes(columns=["episode_id", "scenario"]).column(c).to_pylist()
                       for c in ("episode_id", "scenario")), strict=True))
    data = {}
    for split in ("train", "test"):
        steps = pack.steps(split=split, columns=[*policy.feature_names, "episode_id"])
        x = _prepared(policy, steps, str(pack.path))
        episodes = steps.column("episode_id").to_pylist()
        data[split] = (x, np.array([cause[e] for e in episodes]), episodes)
    model = LogisticRegression(max_iter=2000)
    model.fit(data["train"][0], data["train"][1])
    x, truth, episodes = data["test"]
    predicted = model.predict(x)
    correct: dict[str, list[float]] = defaultdict(list)
    for episode, ok in zip(episodes, predicted == truth, strict=True):
        correct[episode].append(float(ok))
    balanced = balanced_accuracy(list(truth), list(predicted))
    return {"by_episode": {e: float(np.mean(v)) for e, v in sorted(correct.items())},
            "balanced_accuracy": balanced,
            "classes": sorted(set(data["train"][1]))}


def _prepared(policy: LearnedPolicy, table: pa.Table, where: str) -> np.ndarray:
    return prepare(policy.standardize(table, where)).numpy()


# ---- phase 4: online -----------------------------------------------------------------------------

def online_spec(pack: Pack, generation: dict[str, Any], policy: str, policy_sha256: str | None = None
                ) -> GenerationSpec:
    """Fresh episodes like the pack's: same config, dataset, epochs, scenario mix and environment
    options; the run seed is the pack's plus one, so no episode repeats one the policies trained on.
    Exploration and counterfactual branching are off: this measures the policy, nothing else."""
    return roll_in_spec(pack, policy, policy_sha256, int(generation["rng_seed"]) + 1)


def _online(spec: CompareSpec, pack: Pack, generation: dict[str, Any], models: dict[str, list[LearnedPolicy]],
            out: Path, show_progress: bool) -> dict[str, Any]:
    runs = {name: (name, None) for name in REFERENCES}
    runs.update({m.name: (str(out / "models" / m.name), m.weights_sha256) for arm in ARMS for m in models[arm]})
    episodes: dict[str, pa.Table] = {}
    for name, (policy, sha) in runs.items():
        path = out / "online" / name
        gen = online_spec(pack, generation, policy, sha)
        generate(gen, path, spec.online_episodes, workers=spec.workers,
                 resume=(path / MANIFEST_NAME).exists(), show_progress=show_progress, engine=spec.engine)
        episodes[name] = open_pack(path).episodes(columns=["episode_id", "scenario", "final_accuracy",
                                                           "params_added", "seed_outcomes"])
    per_policy = {name: _episode_metrics(table) for name, table in episodes.items()}
    ids = sorted(per_policy["never"]["final_accuracy"])
    scenario = dict(zip(episodes["never"].column("episode_id").to_pylist(),
                        episodes["never"].column("scenario").to_pylist(), strict=True))
    arms = {**{arm: {metric: _mean_over_seeds([per_policy[m.name][metric] for m in models[arm]])
                     for metric in METRICS} for arm in ARMS},
            **{ref: per_policy[ref] for ref in REFERENCES}}
    return {
        "episodes": ids,
        "scenario": {e: scenario[e] for e in ids},
        "policies": per_policy,
        "arms": {arm: {metric: summarize(values) for metric, values in by_metric.items()}
                 for arm, by_metric in arms.items()},
        "differences": {f"{a} - {b}": {metric: summarize(_paired(arms[a][metric], arms[b][metric]))
                                       for metric in METRICS} for a, b in DIFFERENCES},
        "per_cause": _per_cause(arms, scenario, ids),
    }


METRICS = ("final_accuracy", "fossilized", "params_added")
DIFFERENCES = (("candidate", "baseline"), ("candidate", "heuristic"), ("baseline", "heuristic"),
               ("candidate", "never"), ("baseline", "never"), ("heuristic", "never"))


def _episode_metrics(table: pa.Table) -> dict[str, dict[str, float]]:
    rows = table.to_pylist()
    return {
        "final_accuracy": {r["episode_id"]: float(r["final_accuracy"]) for r in rows},
        "fossilized": {r["episode_id"]: float(sum(s["outcome"] == "fossilized" for s in r["seed_outcomes"] or []))
                       for r in rows},
        "params_added": {r["episode_id"]: float(r["params_added"]) for r in rows},
    }


def _per_cause(arms: dict[str, dict[str, dict[str, float]]], scenario: dict[str, str],
               ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cause in sorted(set(scenario.values())):
        chosen = [e for e in ids if scenario[e] == cause]
        out[cause] = {arm: summarize({e: values["final_accuracy"][e] for e in chosen})
                      for arm, values in arms.items()}
        out[cause]["candidate - baseline"] = summarize(
            _paired({e: arms["candidate"]["final_accuracy"][e] for e in chosen}, arms["baseline"]["final_accuracy"]))
    return out


# ---- shared --------------------------------------------------------------------------------------

def summarize(by_episode: dict[str, float]) -> dict[str, Any]:
    """Mean and 95% bootstrap interval of per-episode values, with the values themselves."""
    ids = sorted(by_episode)
    mean, low, high = bootstrap_ci([by_episode[e] for e in ids])
    return {"mean": _finite(mean), "low": _finite(low), "high": _finite(high), "n": len(ids),
            "by_episode": {e: by_episode[e] for e in ids}}


def _arms_and_difference(values: dict[str, dict[str, float]]) -> dict[str, Any]:
    out = {arm: summarize(values[arm]) for arm in ARMS}
    out["candidate - baseline"] = summarize(_paired(values["candidate"], values["baseline"]))
    return out


def _mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    return {e: float(np.mean([seed[e] for seed in per_seed])) for e in sorted(per_seed[0])}


def _paired(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {e: a[e] - b[e] for e in sorted(a) if e in b}


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)
