"""Batch generation: N annotated episodes into a pack, in parallel, committed as they finish.

    generate(GenerationSpec(load_config("diagnostic")), "runs/pack", episodes=200, workers=8)
    generate(spec, "runs/pack", 10_000, engine=EngineOptions("ray", address="head:6379"))

Episodes run on an engine (engine.py): the local process pool by default, or Ray across machines.
Each runs in a worker with one torch thread, so an episode's floats do not depend on the engine or
on how many threads a worker happened to get, and comes back as Arrow tables; this process is the
pack's only writer and commits each episode as it arrives: a crash or a kill loses at most the
episodes in flight. Episode i's content depends only on (spec, i), so `resume=True` finishes an
interrupted pack to exactly N episodes, none duplicated, with either engine, and the result equals
an uninterrupted run's. The pack's writer lock refuses a second run on the same pack.

An episode that raises is reported with its id and error; the run stops there (the pack keeps what
was committed), or with `keep_going=True` finishes the others and reports every failure at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pipelines.environment.actions import ACTION_NAMES
from pipelines.environment.datasets import Dataset, load_dataset
from pipelines.environment.host import HostCNN
from pipelines.environment.morphogenetic_env import SLOT
from pipelines.environment.scenarios import SCENARIOS
from pipelines.generation.capacity import cap_workers, cores
from pipelines.generation.counterfactual import CONTINUATIONS
from pipelines.generation.engine import Done, Engine, EngineOptions, Failed, open_engine
from pipelines.generation.episode import POLICIES, GenerationSpec, episode_id
from pipelines.generation.episode_task import EpisodeTask, one_thread
from pipelines.generation.progress import Progress
from pipelines.policies.learned_policy import POLICY_FILE, LearnedPolicy
from telemetry import EsperError, FeatureSchema, PackError, build_feature_schema, profile_feature_names
from telemetry.packs import (
    MANIFEST_NAME,
    Manifest,
    PackWriter,
    broken_current,
    read_manifest,
    recover_interrupted_create,
    repair_current,
)

# Settings that may differ between a run and its --resume without changing any episode's content.
_RESUME_FREE = ("data_dir",)
# A writer holds every episode id of its pack in memory (about 100 bytes each) and a run draws its
# indices lazily; past this, split the run into several packs.
MAX_EPISODES = 10_000_000
_one_thread = one_thread  # the name tests and benchmarks use


class GenerationError(EsperError):
    """Bad generation settings, or a pack that cannot be completed with them."""


class EpisodesFailed(GenerationError):
    """Episodes raised while running; the pack holds every episode that finished."""

    def __init__(self, message: str, failures: list[Failed]) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True)
class GenerationReport:
    path: Path
    added: int
    total: int
    seconds: float


def check_spec(spec: GenerationSpec, episodes: int, workers: int | None,
               engine: EngineOptions | None = None) -> None:
    """Every setting checked before anything is started or written."""
    if episodes < 1:
        raise GenerationError(f"--episodes must be >= 1, got {episodes}")
    if episodes > MAX_EPISODES:
        raise GenerationError(f"--episodes {episodes}: expected at most {MAX_EPISODES:,} per pack (its writer "
                              "holds every episode id in memory); split the run into several packs")
    if workers is not None and workers < 1:
        raise GenerationError(f"--workers must be >= 1, got {workers}")
    engine = engine or EngineOptions()
    engine.check(spec.device)
    if spec.rng_seed < 0:  # episode streams are numpy SeedSequences, which take non-negative integers only
        raise GenerationError(f"--seed must be >= 0, got {spec.rng_seed}")
    if spec.epochs < 2:
        raise GenerationError(f"--epochs must be >= 2 (epoch 0 and at least one decision), got {spec.epochs}")
    if not 0.0 <= spec.epsilon <= 1.0:
        raise GenerationError(f"epsilon must be in [0, 1], got {spec.epsilon}")
    if not 0.0 <= spec.counterfactual_fraction <= 1.0:
        raise GenerationError(f"--counterfactual must be in [0, 1], got {spec.counterfactual_fraction}")
    if spec.counterfactual_epochs is not None and spec.counterfactual_epochs < 1:
        raise GenerationError(f"--counterfactual-epochs must be >= 1, got {spec.counterfactual_epochs}")
    if spec.counterfactual_continuation not in CONTINUATIONS:
        raise GenerationError(f"--counterfactual-continuation {spec.counterfactual_continuation!r}: expected one "
                              f"of {', '.join(CONTINUATIONS)}")
    if spec.hindsight_epochs < 1:
        raise GenerationError(f"--hindsight-epochs must be >= 1, got {spec.hindsight_epochs}")
    if spec.policy not in POLICIES and (not spec.policy.strip() or not (Path(spec.policy) / POLICY_FILE).is_file()):
        raise GenerationError(f"--policy {spec.policy!r}: expected {', '.join(POLICIES)}, or a policy directory "
                              "written by `esper train`")
    unknown = [s for s in spec.scenarios if s not in SCENARIOS]
    if unknown or not spec.scenarios:
        raise GenerationError(f"--scenarios: {unknown[0] if unknown else 'empty'!r} is not a scenario; "
                              f"expected a comma-separated subset of: {', '.join(SCENARIOS)}")
    if spec.device not in ("cpu", "cuda") and not spec.device.startswith("cuda:"):
        raise GenerationError(f"--device must be cpu or cuda, got {spec.device!r}")
    remote = engine.kind == "ray" and engine.address is not None  # the cluster's nodes need CUDA, not this one
    if spec.device.startswith("cuda") and not remote and not torch.cuda.is_available():
        raise GenerationError(f"--device {spec.device}: CUDA is not available on this machine")


def reference_host(dataset: Dataset, spec: GenerationSpec) -> HostCNN:
    """The host as built for a healthy-width episode; the feature schema depends only on its names."""
    return HostCNN(dataset.channels, dataset.num_classes, width=spec.options.width, input_size=dataset.size,
                   slots=(SLOT,))


def _provenance(spec: GenerationSpec, host: HostCNN, dataset: Dataset, episodes: int) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "seeds": [spec.rng_seed],
        "host_model": {"class": type(host).__name__, "in_channels": dataset.channels,
                       "num_classes": dataset.num_classes, "input_size": dataset.size,
                       "width": spec.options.width, "slots": list(host.slots()),
                       "parameters": sum(p.numel() for p in host.parameters())},
        "generation": spec.describe(),
        "episodes_requested": episodes,
    }


def generate(spec: GenerationSpec, out: str | Path, episodes: int, *, workers: int | None = 1,
             resume: bool = False, show_progress: bool = True, engine: EngineOptions | None = None,
             keep_going: bool = False, say: Callable[[str], None] | None = None) -> GenerationReport:
    """Generate episodes 0..N-1 of `spec` into the pack at `out` (or the missing ones, with resume).

    `workers`: episodes at once (None: 1 on the local pool, the cluster's capacity on Ray). `engine`:
    where they run (default: the local pool). `keep_going`: finish the other episodes when one raises.
    `say`: where notes and failures are printed (default: stderr). Raises `EpisodesFailed` when
    episodes failed, after committing every one that finished.
    """
    engine = engine or EngineOptions()
    say = say or _stderr
    check_spec(spec, episodes, workers, engine)
    out = Path(out)
    dataset = load_dataset(spec.dataset, spec.data_dir)
    host = reference_host(dataset, spec)
    schema = build_feature_schema(spec.config, host, dataset.num_classes)
    if spec.policy not in POLICIES:
        spec = _with_learned_policy(spec, schema)
    workers = _machine_workers(workers, engine, dataset, say)
    runner = open_engine(engine, workers)  # before the pack: a cluster that cannot be reached leaves nothing
    writer = _open(out, spec, schema, host, dataset, episodes, resume)
    start = time.monotonic()
    try:
        todo = _todo(writer, out, episodes)
        progress = Progress(episodes, episodes - len(todo), status=runner.status) if show_progress else None
        task = EpisodeTask(spec, writer.manifest.arrow_schema("steps"), writer.manifest.arrow_schema("episodes"),
                           dataset)
        added, failures = _commit_results(runner, task, todo, writer, progress, keep_going, say)
        if progress:
            progress.close()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if failures:
        committed = episodes - len(todo) + added
        raise EpisodesFailed(_failure_message(failures, out, committed, episodes, keep_going), failures)
    return GenerationReport(out, added, episodes, time.monotonic() - start)


class _Todo:
    """Indices 0..N-1 not yet in the pack, drawn lazily: never a list of every index."""

    def __init__(self, episodes: int, done: set[int]) -> None:
        self.episodes, self.done = episodes, done

    def __len__(self) -> int:
        return self.episodes - len(self.done)

    def __iter__(self) -> Iterator[int]:
        for i in range(self.episodes):
            if i not in self.done:
                yield i


def _todo(writer: PackWriter, out: Path, episodes: int) -> _Todo:
    done = {int(i.removeprefix("ep-")) for i in writer.episode_ids}
    beyond = max(done, default=-1)
    if beyond >= episodes:
        raise GenerationError(f"{out}: the pack already holds episode {beyond} (of {len(done)}); "
                              f"--episodes {episodes} must be at least {beyond + 1}")
    return _Todo(episodes, done)


def _commit_results(runner: Engine, task: EpisodeTask, todo: _Todo, writer: PackWriter, progress: Progress | None,
                    keep_going: bool, say: Callable[[str], None]) -> tuple[int, list[Failed]]:
    """Commit each episode as it arrives; a failure is reported at once and stops the run unless keep_going.
    Returns the episodes committed and the failures."""
    added, failures = 0, []
    with closing(runner.run(task, todo)) as outcomes:
        for outcome in outcomes:
            if isinstance(outcome, Failed):
                failures.append(outcome)
                (progress.note if progress else say)(f"{episode_id(outcome.key)} failed: {outcome.error}")
                if not keep_going:
                    break
                continue
            assert isinstance(outcome, Done)
            tables = outcome.value
            writer.add_episodes(tables.episode, tables.steps)
            writer.commit()
            added += 1
            if progress:
                progress.advance()
    return added, failures


def _failure_message(failures: list[Failed], out: Path, committed: int, episodes: int, keep_going: bool) -> str:
    first = failures[0]
    if not keep_going:
        return (f"{episode_id(first.key)} failed: {first.error}; stopped with {committed} of {episodes} episodes in "
                f"{out} (rerun with --resume once the cause is fixed, or with --keep-going to run the others past "
                "a failure)")
    ids = ", ".join(episode_id(f.key) for f in failures[:5]) + (", ..." if len(failures) > 5 else "")
    return (f"{len(failures)} of {episodes} episodes failed ({ids}; the first: {first.error}); {out} holds "
            f"the {committed} others: rerun with --resume once the cause is fixed")


def _machine_workers(workers: int | None, engine: EngineOptions, dataset: Dataset,
                     say: Callable[[str], None]) -> int | None:
    """Workers capped at what this machine holds, when they run on it (not on a cluster's nodes)."""
    if engine.kind == "ray" and engine.address is not None:
        return workers
    bytes_ = sum(t.numel() * t.element_size() for t in (dataset.x_train, dataset.y_train, dataset.x_val,
                                                         dataset.y_val))
    if workers is None:  # the local pool's default is one worker, a local Ray instance's the machine
        return cap_workers(cores(), bytes_)[0] if engine.kind == "ray" else 1
    capped, note = cap_workers(workers, bytes_)
    if note:
        say(note)
    return capped


def _stderr(line: str) -> None:
    print(f"esper: {line}", file=sys.stderr, flush=True)


def _with_learned_policy(spec: GenerationSpec, schema: FeatureSchema) -> GenerationSpec:
    """Check a saved policy against the features this run records, and pin it by path and checksum."""
    policy = LearnedPolicy.load(spec.policy)
    policy.check_features(schema.names, f"--profile {spec.config.profile_name} on {spec.dataset}")
    policy.check_actions(ACTION_NAMES, "the environment")
    if spec.policy_sha256 is not None and spec.policy_sha256 != policy.weights_sha256:
        raise GenerationError(f"--policy {spec.policy}: weights sha256 {policy.weights_sha256} differs from the "
                              f"requested {spec.policy_sha256}")
    return replace(spec, policy=str(Path(spec.policy).resolve()), policy_sha256=policy.weights_sha256)


def _open(out: Path, spec: GenerationSpec, schema: FeatureSchema, host: HostCNN, dataset: Dataset,
          episodes: int, resume: bool) -> PackWriter:
    if resume and not recover_interrupted_create(out):
        repair_current(out)  # a lost `current`: the pack is its last complete commit again, never recreated
    if (out / MANIFEST_NAME).exists():
        if not resume:
            raise GenerationError(f"{out}: a pack already exists there; pass --resume to complete it to "
                                  f"{episodes} episodes, or choose another --out")
        _check_resumable(out, read_manifest(out), spec)
        return PackWriter.open_append(out, spec.config, schema)
    if out.is_dir() and broken_current(out):
        raise GenerationError(broken_current(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenerationError(f"{out}: exists and is not a pack (no {MANIFEST_NAME}); choose another --out")
    try:
        return PackWriter.create(out, spec.config, schema, provenance=_provenance(spec, host, dataset, episodes),
                                 profiles=profile_feature_names(host, dataset.num_classes))
    except PackError:
        if (out / MANIFEST_NAME).exists() or (out.is_dir() and any(out.iterdir())):  # another run won the race
            raise GenerationError(f"{out}: another run created a pack there meanwhile; pass --resume to "
                                  f"complete it to {episodes} episodes, or choose another --out") from None
        raise


def _check_resumable(out: Path, manifest: Manifest, spec: GenerationSpec) -> None:
    """--resume must reproduce the episodes an uninterrupted run would have written."""
    recorded = (manifest.provenance.model_extra or {}).get("generation")
    if not isinstance(recorded, dict):
        raise GenerationError(f"{out}: the pack was not written by `esper generate`; it cannot be resumed")
    now = spec.describe()
    for key in sorted(set(recorded) | set(now)):
        if key in _RESUME_FREE:
            continue
        if recorded.get(key) != now.get(key):
            raise GenerationError(f"--resume: the pack was generated with {key}={recorded.get(key)!r}, this run "
                                  f"has {key}={now.get(key)!r}; resume with the pack's settings")
