"""Generation throughput: episodes per hour with minimal and diagnostic telemetry, and where the time goes.

Throughput: `generate()` writes the same episodes (same seed, so the same scenario mix) into a fresh
pack with each profile, in a rotating order per repetition; the diagnostic/minimal ratio is the
median over repetitions of the wall times of the same repetition. Counterfactual rollouts are off
for this comparison (they multiply training, whatever the profile) and measured as a third variant.

Breakdown: episodes run in this process on one thread with timers around the tracker's methods
(telemetry) and the annotation functions (decision context, hindsight, summary), giving each one's
share of the episode's wall time per profile.

    python benchmarks/generation.py             # 8 episodes x 3 repetitions, 2 workers
    python benchmarks/generation.py --quick     # under a minute on 2 CPU cores
    python benchmarks/generation.py --json      # one JSON object
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
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
from pipelines.generation.episode import GenerationSpec, run_episode
from pipelines.generation.generate import _one_thread, generate
from telemetry import DiagnosticTracker, load_config

VARIANTS = {"minimal": ("minimal", 0.0), "diagnostic": ("diagnostic", 0.0),
            "diagnostic+counterfactual": ("diagnostic", GenerationSpec.counterfactual_fraction)}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    times: dict[str, list[float]] = defaultdict(list)
    names = list(VARIANTS)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 episodes of 10 epochs, 1 repetition")
    p.add_argument("--json", action="store_true")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--breakdown-episodes", type=int, default=4)
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
