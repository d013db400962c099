"""Batch generation: N annotated episodes into a pack, in parallel, committed as they finish.

    generate(GenerationSpec(load_config("diagnostic")), "runs/pack", episodes=200, workers=8)

Episodes run in worker processes (spawned, one torch thread each, so an episode's floats do not
depend on how many threads a worker happened to get) and are committed to the pack one by one as
they finish: a crash or a kill loses at most the episodes in flight. Episode i's content depends
only on (spec, i), so `resume=True` finishes an interrupted pack to exactly N episodes, none
duplicated, and the result equals an uninterrupted run's. The pack's writer lock refuses a second
run on the same pack.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from pipelines.environment.actions import ACTION_NAMES
from pipelines.environment.datasets import Dataset, load_dataset
from pipelines.environment.host import HostCNN
from pipelines.environment.scenarios import SCENARIOS
from pipelines.generation.episode import POLICIES, EpisodeResult, GenerationSpec, episode_id, run_episode
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


class GenerationError(EsperError):
    """Bad generation settings, or a pack that cannot be completed with them."""


@dataclass(frozen=True)
class GenerationReport:
    path: Path
    added: int
    total: int
    seconds: float


def check_spec(spec: GenerationSpec, episodes: int, workers: int) -> None:
    """Every setting checked before anything is started or written."""
    if episodes < 1:
        raise GenerationError(f"--episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise GenerationError(f"--workers must be >= 1, got {workers}")
    if spec.rng_seed < 0:  # episode streams are numpy SeedSequences, which take non-negative integers only
        raise GenerationError(f"--seed must be >= 0, got {spec.rng_seed}")
    if spec.epochs < 2:
        raise GenerationError(f"--epochs must be >= 2 (epoch 0 and at least one decision), got {spec.epochs}")
    if not 0.0 <= spec.epsilon <= 1.0:
        raise GenerationError(f"epsilon must be in [0, 1], got {spec.epsilon}")
    if not 0.0 <= spec.counterfactual_fraction <= 1.0:
        raise GenerationError(f"--counterfactual must be in [0, 1], got {spec.counterfactual_fraction}")
    if spec.counterfactual_epochs < 1:
        raise GenerationError(f"--counterfactual-epochs must be >= 1, got {spec.counterfactual_epochs}")
    if spec.hindsight_epochs < 1:
        raise GenerationError(f"--hindsight-epochs must be >= 1, got {spec.hindsight_epochs}")
    if spec.policy not in POLICIES and (not spec.policy.strip() or not (Path(spec.policy) / POLICY_FILE).is_file()):
        raise GenerationError(f"--policy {spec.policy!r}: expected {', '.join(POLICIES)}, or a policy directory "
                              "written by `esper train`")
    if spec.policy != "heuristic" and spec.counterfactual_fraction > 0:
        raise GenerationError(f"--counterfactual {spec.counterfactual_fraction} needs --policy heuristic (the "
                              "rollouts continue with the heuristic); use --counterfactual 0 with this policy")
    unknown = [s for s in spec.scenarios if s not in SCENARIOS]
    if unknown or not spec.scenarios:
        raise GenerationError(f"--scenarios: {unknown[0] if unknown else 'empty'!r} is not a scenario; "
                              f"expected a comma-separated subset of: {', '.join(SCENARIOS)}")
    if spec.device not in ("cpu", "cuda") and not spec.device.startswith("cuda:"):
        raise GenerationError(f"--device must be cpu or cuda, got {spec.device!r}")
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"--device {spec.device}: CUDA is not available on this machine")


def reference_host(dataset: Dataset, spec: GenerationSpec) -> HostCNN:
    """The host as built for a healthy-width episode; the feature schema depends only on its names."""
    return HostCNN(dataset.channels, dataset.num_classes, width=spec.options.width, input_size=dataset.size)


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


def generate(spec: GenerationSpec, out: str | Path, episodes: int, *, workers: int = 1,
             resume: bool = False, show_progress: bool = True) -> GenerationReport:
    """Generate episodes 0..N-1 of `spec` into the pack at `out` (or the missing ones, with resume)."""
    check_spec(spec, episodes, workers)
    out = Path(out)
    dataset = load_dataset(spec.dataset, spec.data_dir)
    host = reference_host(dataset, spec)
    schema = build_feature_schema(spec.config, host, dataset.num_classes)
    if spec.policy not in POLICIES:
        spec = _with_learned_policy(spec, schema)
    writer = _open(out, spec, schema, host, dataset, episodes, resume)
    start = time.monotonic()
    try:
        done = {int(i.removeprefix("ep-")) for i in writer.episode_ids}
        beyond = sorted(i for i in done if i >= episodes)
        if beyond:
            raise GenerationError(f"{out}: the pack already holds episode {beyond[-1]} (of {len(done)}); "
                                  f"--episodes {episodes} must be at least {beyond[-1] + 1}")
        todo = [i for i in range(episodes) if i not in done]
        progress = Progress(episodes, len(done)) if show_progress else None
        with closing(_results(spec, todo, workers, dataset)) as results:
            for result in results:
                writer.add_episode(result.episode, result.steps)
                writer.commit()
                if progress:
                    progress.advance()
        if progress:
            progress.close()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return GenerationReport(out, len(todo), episodes, time.monotonic() - start)


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


# ---- running episodes ----------------------------------------------------------------------------

def _results(spec: GenerationSpec, todo: list[int], workers: int, dataset: Dataset) -> Iterator[EpisodeResult]:
    """Finished episodes in completion order."""
    if not todo:
        return
    if workers == 1:
        with _one_thread():
            for index in todo:
                yield run_episode(spec, index, dataset)
        return
    yield from _parallel(spec, todo, workers)


@contextmanager
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _parallel(spec: GenerationSpec, todo: list[int], workers: int) -> Iterator[EpisodeResult]:
    """At most 2 * workers episodes queued at once, so an abort never leaves a long queue to drain."""
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(spec,))
    pending: dict[Future[EpisodeResult], int] = {}
    queue = iter(todo)
    try:
        for index in queue:
            pending[pool.submit(_work, index)] = index
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                index = pending.pop(future)
                yield _result(future, index)
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(_work, nxt)] = nxt
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Future[EpisodeResult], index: int) -> EpisodeResult:
    try:
        return future.result()
    except BrokenProcessPool:
        raise GenerationError(f"a worker process died while running {episode_id(index)} (killed, or out of "
                              "memory); finished episodes are committed: rerun with --resume") from None


_SPEC: GenerationSpec | None = None
_DATASET: Dataset | None = None


def _init_worker(spec: GenerationSpec) -> None:
    global _SPEC, _DATASET
    torch.set_num_threads(1)
    _SPEC, _DATASET = spec, load_dataset(spec.dataset, spec.data_dir)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A killed run cannot shut its pool down, and its idle workers would wait for work forever."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _work(index: int) -> EpisodeResult:
    assert _SPEC is not None and _DATASET is not None
    return run_episode(_SPEC, index, _DATASET)
