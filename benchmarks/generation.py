"""Generation throughput: episodes per hour with minimal and diagnostic telemetry, and where the time goes.

Throughput: `generate()` writes the same episodes (same seed, so the same scenario mix) into a fresh
pack with each profile, in a rotating order per repetition; the diagnostic/minimal ratio is the
median over repetitions of the wall times of the same repetition. Counterfactual rollouts are off
for this comparison (they multiply training, whatever the profile) and measured as a third variant.

Breakdown: episodes run in this process on one thread with timers around the tracker's methods
(telemetry) and the annotation functions (decision context, hindsight, summary), giving each one's
share of the episode's wall time per profile.

Engines (`--engine ray`): the same episodes on the local pool and on Ray (a local Ray instance
started once, before timing, as a cluster would be) at 1, 2, 4, ... workers up to all cores, the
engines interleaved. Episodes per hour are steady-state rates, from the first committed episode to
the last (start-up of either engine excluded: workers spawning and importing torch); the whole-run
rate is reported beside them. Ray / local at the same worker count is the engine's overhead;
eph(W) / (W * eph(1)) is each engine's scaling efficiency.

    python benchmarks/generation.py             # 8 episodes x 3 repetitions, 2 workers
    python benchmarks/generation.py --quick     # under a minute on 2 CPU cores
    python benchmarks/generation.py --json      # one JSON object
    python benchmarks/generation.py --engine ray [--quick]   # Ray against the local pool, 1..all cores
    python benchmarks/generation.py --against b0de67c [--quick]  # time per episode against that commit
    python benchmarks/generation.py --schedules [--episodes 12]  # each telemetry schedule over minimal, A/A

Against a commit (`--against REV`): REV's tree is extracted with `git archive` into a temporary
folder, and the same in-process timing (one thread, behaviour policy, no rollouts, each tree's own
default data set and environment) runs in alternating subprocesses, one per tree and repetition;
the ratio is the median over repetitions of this tree's mean time per episode over REV's. This is
how an environment redesign is held to "within 1.5x of the previous time per episode".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import pipelines.generation.episode as episode_module
import pipelines.generation.summary as summary_module
from pipelines.environment.datasets import load_dataset
from pipelines.generation.capacity import cores
from pipelines.generation.engine import EngineOptions
from pipelines.generation.episode import GenerationSpec, run_episode
from pipelines.generation.generate import _one_thread, generate
from telemetry import DiagnosticTracker, load_config
from telemetry.packs import PackWriter

VARIANTS = {"minimal": ("minimal", 0.0), "diagnostic": ("diagnostic", 0.0),
            "diagnostic+counterfactual": ("diagnostic", GenerationSpec.counterfactual_fraction)}


def _rotated(names: list[str], k: int) -> list[str]:
    """The order of repetition k: each variant goes first in turn, so load drift hits all alike."""
    return names[k % len(names):] + names[:k % len(names)]


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    times: dict[str, list[float]] = defaultdict(list)
    names = list(VARIANTS)
    for rep in range(args.reps):
        for name in _rotated(names, rep):
            profile, cf = VARIANTS[name]
            spec = GenerationSpec(load_config(profile), dataset=args.dataset, epochs=args.epochs, rng_seed=args.seed,
                                  counterfactual_fraction=cf)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                generate(spec, Path(tmp) / "pack", args.episodes, workers=args.workers, show_progress=False)
                times[name].append(time.perf_counter() - start)
    ratios = [d / m for d, m in zip(times["diagnostic"], times["minimal"], strict=True)]
    return {
        "episodes_per_hour": {n: round(3600 * args.episodes / statistics.median(t), 1) for n, t in times.items()},
        "diagnostic_over_minimal": round(statistics.median(ratios), 3),
        "counterfactual_over_diagnostic": round(statistics.median(
            [c / d for c, d in zip(times["diagnostic+counterfactual"], times["diagnostic"], strict=True)]), 3),
    }


def engines(args: argparse.Namespace) -> dict[str, Any]:
    """Steady-state episodes per hour of both engines at each worker count (see the module docstring)."""
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance on loopback only
    import ray

    counts = sorted({*(2**i for i in range(8) if 2**i < cores()), cores()})
    start = time.perf_counter()
    ray.init(address="local", num_cpus=cores(), include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - start
    spec = GenerationSpec(load_config(args.profile), dataset=args.dataset, epochs=args.epochs, rng_seed=args.seed,
                          counterfactual_fraction=0.0)
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {"local": defaultdict(list), "ray": defaultdict(list)}
    try:
        for rep in range(args.reps):
            for workers in counts:
                order = ["local", "ray"] if rep % 2 == 0 else ["ray", "local"]
                for engine in order:
                    runs[engine][workers].append(_timed_run(spec, args.episodes, workers, EngineOptions(engine)))
    finally:
        ray.shutdown()
    steady = {e: {w: statistics.median(r[0] for r in rs) for w, rs in by.items()} for e, by in runs.items()}
    whole = {e: {w: statistics.median(r[1] for r in rs) for w, rs in by.items()} for e, by in runs.items()}
    return {
        "worker_counts": counts,
        "ray_instance_start_s": round(ray_start, 1),
        "episodes_per_hour_steady": {e: {w: round(v, 1) for w, v in by.items()} for e, by in steady.items()},
        "episodes_per_hour_whole_run": {e: {w: round(v, 1) for w, v in by.items()} for e, by in whole.items()},
        "ray_over_local": {w: round(steady["ray"][w] / steady["local"][w], 3) for w in counts},
        "scaling_efficiency": {e: {w: round(by[w] / (w * by[1]), 3) for w in counts} for e, by in steady.items()},
    }


def _timed_run(spec: GenerationSpec, episodes: int, workers: int, engine: EngineOptions) -> tuple[float, float]:
    """(steady-state, whole-run) episodes per hour of one run into a fresh pack."""
    stamps: list[float] = []
    commit = PackWriter.commit

    def timed(self: Any) -> Any:
        out = commit(self)
        stamps.append(time.perf_counter())
        return out

    PackWriter.commit = timed  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(spec, Path(tmp) / "pack", episodes, workers=workers, engine=engine, show_progress=False)
            total = time.perf_counter() - start
    finally:
        PackWriter.commit = commit  # type: ignore[method-assign]
    episode_commits = stamps[:episodes]  # then the commits of close(): nothing new, and the compaction
    steady = 3600 * (episodes - 1) / (episode_commits[-1] - episode_commits[0])
    return steady, 3600 * episodes / total


class _Timers:
    """Wall time inside wrapped callables, by label; nested calls are not double counted."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            if self._depth:
                return fn(*a, **kw)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self._depth -= 1
        return timed


def breakdown(args: argparse.Namespace, profile: str) -> dict[str, float]:
    timers = _Timers()
    patches = [(DiagnosticTracker, m, "telemetry") for m in ("train_batch", "val_batch", "end_step")]
    patches += [(episode_module, f, "annotation") for f in ("decision_context", "_fill_hindsight")]
    patches += [(summary_module.EpisodeLog, m, "annotation") for m in ("observe", "act", "finish")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, label in patches:
        setattr(owner, name, timers.wrap(label, getattr(owner, name)))
    try:
        dataset = load_dataset(args.dataset)
        spec = GenerationSpec(load_config(profile), dataset=args.dataset, epochs=args.epochs, rng_seed=args.seed,
                              counterfactual_fraction=0.0)
        with _one_thread():
            run_episode(replace(spec, epochs=2), 0, dataset)  # warm-up: lazy imports (torch.optim's) and caches
        timers.seconds.clear()
        start = time.perf_counter()
        with _one_thread():
            for i in range(args.breakdown_episodes):
                run_episode(spec, i, dataset)
        total = time.perf_counter() - start
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    return {"seconds_per_episode": round(total / args.breakdown_episodes, 3),
            **{f"{label}_share": round(s / total, 4) for label, s in sorted(timers.seconds.items())}}


_TIMING = """
import json, sys, time, torch
torch.set_num_threads(1)
from pipelines.environment.datasets import load_dataset
from pipelines.generation.episode import GenerationSpec, run_episode
from telemetry import load_config
profile, episodes, epochs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
spec = GenerationSpec(load_config(profile), epochs=epochs, rng_seed=seed, counterfactual_fraction=0.0)
data = load_dataset(spec.dataset)
times = []
for i in range(episodes):
    start = time.perf_counter()
    run_episode(spec, i, data)
    times.append(time.perf_counter() - start)
print(json.dumps({"dataset": spec.dataset, "seconds": times}))
"""


def against(args: argparse.Namespace) -> dict[str, Any]:
    """Mean time per episode of this tree and of `args.against`, alternating subprocesses."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="esper-baseline-") as base:
        archive = subprocess.run(["git", "-C", str(root), "archive", args.against], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
        trees = {"this": str(root), "baseline": base}
        runs: dict[str, list[float]] = defaultdict(list)
        datasets: dict[str, str] = {}
        for rep in range(args.reps):
            for name in (("this", "baseline") if rep % 2 else ("baseline", "this")):
                out = subprocess.run([sys.executable, "-c", _TIMING, args.profile, str(args.episodes),
                                      str(args.epochs), str(args.seed)], capture_output=True, text=True,
                                     check=True, cwd=trees[name], env={**os.environ, "PYTHONPATH": trees[name]})
                found = json.loads(out.stdout.strip().splitlines()[-1])
                datasets[name] = found["dataset"]
                runs[name].append(statistics.mean(found["seconds"]))
    ratios = [t / b for t, b in zip(runs["this"], runs["baseline"], strict=True)]
    return {"against": args.against, "datasets": datasets, "seconds_per_episode": dict(runs),
            "this_over_baseline": round(statistics.median(ratios), 3)}


SCHEDULES = {  # name: (profile, overrides); "minimal (A/A)" is minimal again, the noise floor of the ratios
    "minimal (A/A)": ("minimal", ()),
    "diagnostic": ("diagnostic", ()),
    "diagnostic, sharpness 1 step in 4": ("diagnostic", ("loss_landscape.every_n_steps=4",)),
    "diagnostic, gradients 1 batch in 4, sharpness 1 step in 4":
        ("diagnostic", ("gradients.every_n_batches=4", "loss_landscape.every_n_steps=4")),
    "diagnostic, gradients 1 batch in 12, sharpness 1 step in 8":
        ("diagnostic", ("gradients.every_n_batches=12", "loss_landscape.every_n_steps=8")),
    "research": ("research", ()),
}


def schedules(args: argparse.Namespace) -> dict[str, Any]:
    """CPU time per episode of each schedule over minimal's: one thread, in this process, episode i of
    every variant back to back in a rotating order (the same episode seeds and scenarios), the ratio
    the median over episodes of the per-episode ratios. CPU time, because this 2-core machine is
    shared: the load disturbs it far less than wall time."""
    variants = {"minimal": ("minimal", ()), **SCHEDULES}
    data = load_dataset(args.dataset)
    specs = {n: GenerationSpec(load_config(p, overrides=list(o)), dataset=args.dataset, epochs=args.epochs,
                               rng_seed=args.seed, counterfactual_fraction=0.0) for n, (p, o) in variants.items()}
    seconds: dict[str, list[float]] = defaultdict(list)
    names = list(variants)
    with _one_thread():
        for spec in specs.values():
            run_episode(replace(spec, epochs=2), 0, data)  # warm-up: lazy imports and caches
        for i in range(args.episodes):
            for name in _rotated(names, i):
                start = time.process_time()
                run_episode(specs[name], i, data)
                seconds[name].append(time.process_time() - start)
    return {
        "cpu_seconds_per_episode": {n: round(statistics.median(v), 3) for n, v in seconds.items()},
        "over_minimal": {n: round(statistics.median(a / b for a, b in zip(seconds[n], seconds["minimal"],
                                                                           strict=True)), 3) for n in SCHEDULES},
        "overrides": {n: list(o) for n, (_, o) in SCHEDULES.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 episodes of 10 epochs, 1 repetition")
    p.add_argument("--json", action="store_true")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dataset", default="digits_hard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--breakdown-episodes", type=int, default=4)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: compare the Ray engine with the local pool at 1..all cores instead")
    p.add_argument("--profile", default="diagnostic", help="profile of the engine comparison's episodes")
    p.add_argument("--against", metavar="REV", help="time per episode against this commit instead")
    p.add_argument("--schedules", action="store_true",
                   help="CPU time per episode of each telemetry schedule over minimal's instead, with an A/A control")
    args = p.parse_args(argv)
    if args.schedules:
        if args.quick:
            args.episodes, args.epochs = 2, 10
        return _report_schedules(args)
    if args.against:
        if args.quick:
            args.episodes, args.epochs, args.reps = 3, 10, 2
        result = against(args)
        print(json.dumps(result) if args.json else
              f"{args.profile}, {args.episodes} episodes x {args.epochs} epochs, {args.reps} repetitions: "
              f"this tree ({result['datasets']['this']}) / {args.against} ({result['datasets']['baseline']}) "
              f"time per episode = {result['this_over_baseline']:.3f} (median of repetitions); "
              f"seconds per episode {result['seconds_per_episode']}")
        return 0
    if args.engine == "ray":
        if args.quick:
            args.episodes, args.epochs, args.reps = 8, 10, 1
        return _report_engines(args)
    if args.quick:
        args.episodes, args.epochs, args.reps, args.breakdown_episodes = 4, 10, 1, 2
    result: dict[str, Any] = {"device": f"cpu ({platform.processor() or platform.machine()}), "
                                        f"{torch.get_num_threads()} threads available",
                              "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    result.update(throughput(args))
    result["breakdown"] = {prof: breakdown(args, prof) for prof in ("minimal", "diagnostic")}
    b = result["breakdown"]
    result["episode_diagnostic_over_minimal"] = round(
        b["diagnostic"]["seconds_per_episode"] / b["minimal"]["seconds_per_episode"], 3)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device: {result['device']}; {args.episodes} episodes x {args.epochs} epochs on {args.dataset}, "
          f"{args.workers} workers, {args.reps} repetitions (medians)")
    for name, eph in result["episodes_per_hour"].items():
        print(f"  {name:<28} {eph:8.1f} episodes/hour")
    print(f"  diagnostic / minimal wall time of the run: {result['diagnostic_over_minimal']:.3f}"
          "  (includes start-up, dataset loading and pack creation, which dilute the ratio)")
    print(f"  diagnostic / minimal time per episode (one thread, in-process): "
          f"{result['episode_diagnostic_over_minimal']:.3f}  (target <= 1.10)")
    print(f"  counterfactual {GenerationSpec.counterfactual_fraction} / none: "
          f"{result['counterfactual_over_diagnostic']:.3f}")
    for prof, b in result["breakdown"].items():
        shares = ", ".join(f"{k.removesuffix('_share')} {v:.1%}" for k, v in b.items() if k.endswith("_share"))
        print(f"  {prof:<10} {b['seconds_per_episode']:.2f} s/episode on one thread; {shares}")
    return 0


def _report_schedules(args: argparse.Namespace) -> int:
    result = schedules(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.episodes} episodes x {args.epochs} epochs on {args.dataset}, one thread, CPU time, "
          f"minimal {result['cpu_seconds_per_episode']['minimal']:.3f} s/episode (medians)")
    for name, ratio in result["over_minimal"].items():
        print(f"  {name:<60} {ratio:6.3f} x minimal  {' '.join(result['overrides'][name])}")
    return 0


def _report_engines(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {"device": f"cpu ({platform.processor() or platform.machine()}), {cores()} cores",
                              "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    result.update(engines(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device: {result['device']}; {args.episodes} episodes x {args.epochs} epochs on {args.dataset}, "
          f"{args.profile} profile, {args.reps} repetitions (medians); Ray instance start "
          f"{result['ray_instance_start_s']} s (excluded)")
    print(f"  {'workers':>7} {'local eph':>10} {'ray eph':>10} {'ray/local':>9} {'local eff':>9} {'ray eff':>8}"
          f"   whole run: {'local':>7} {'ray':>7}")
    for w in result["worker_counts"]:
        s, e, whole = (result["episodes_per_hour_steady"], result["scaling_efficiency"],
                       result["episodes_per_hour_whole_run"])
        print(f"  {w:>7} {s['local'][w]:>10.0f} {s['ray'][w]:>10.0f} {result['ray_over_local'][w]:>9.3f} "
              f"{e['local'][w]:>9.3f} {e['ray'][w]:>8.3f}   {'':>10} {whole['local'][w]:>7.0f} {whole['ray'][w]:>7.0f}")
    print("  targets: ray/local >= 0.9 at the same worker count; scaling efficiency >= 0.8 at 16 workers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
