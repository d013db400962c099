"""`esper generate`: the project's main job, annotated episodes into a pack.

`add_engine_arguments` / `engine_options` are the engine options (`--engine local|ray`, `--address`,
`--cpus-per-episode`, `--gpus-per-episode`) for any command that runs episodes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from pipelines.environment.datasets import DATASETS
from pipelines.environment.scenarios import SCENARIOS
from pipelines.generation.annotations import HINDSIGHT_EPOCHS
from pipelines.generation.counterfactual import CONTINUATIONS
from pipelines.generation.episode import COUNTERFACTUAL_EPOCHS, POLICIES

if TYPE_CHECKING:
    from pipelines.generation.engine import EngineOptions

EXIT_EPISODES_FAILED = 1  # the run worked but episodes raised (bad input is 2)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Where episodes run; shared by every command that runs episodes."""
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: a process pool on this machine (default); ray: Ray tasks on a cluster "
                        "(pip install 'esper-telemetry[ray]')")
    p.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: join the Ray cluster at ADDR (e.g. head-node:6379; default "
                        "$RAY_ADDRESS); without either, a local Ray instance starts")
    p.add_argument("--cpus-per-episode", type=float, default=1.0, metavar="C",
                   help="with --engine ray: CPUs each episode reserves (default 1; torch runs one thread)")
    p.add_argument("--gpus-per-episode", type=float, default=0.0, metavar="F",
                   help="with --engine ray: GPUs each episode reserves, fractions share one (default 0)")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    from pipelines.generation.engine import EngineOptions

    address = args.address or (os.environ.get("RAY_ADDRESS") or None if args.engine == "ray" else None)
    return EngineOptions(kind=args.engine, address=address, cpus_per_episode=args.cpus_per_episode,
                         gpus_per_episode=args.gpus_per_episode)


def register(sub: argparse._SubParsersAction) -> None:
    from telemetry.cli import add_config_arguments, path_argument

    p = sub.add_parser("generate", help="run episodes of the morphogenetic environment into a pack")
    p.add_argument("--profile", default="diagnostic", help="telemetry profile (default: diagnostic)")
    p.add_argument("--episodes", type=int, required=True, help="episodes the pack should hold")
    p.add_argument("--out", required=True, metavar="PACK", type=path_argument,
                   help="pack directory to create (or resume)")
    p.add_argument("--workers", type=int,
                   help="episodes at once, one torch thread each (default: 1 on the local pool, what the "
                        f"cluster holds with --engine ray; capped at what this machine holds: {os.cpu_count()} CPUs)")
    p.add_argument("--epochs", type=int, default=25, help="epochs per episode, epoch 0 included (default 25)")
    p.add_argument("--dataset", default="digits_hard", choices=DATASETS)
    p.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    p.add_argument("--seed", type=int, default=0, help="run seed; episode i depends only on (seed, i)")
    add_config_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="complete an interrupted pack to --episodes")
    add_engine_arguments(p)
    p.add_argument("--keep-going", action="store_true",
                   help="when an episode raises, report it and run the others (default: stop)")
    p.add_argument("--policy", default="heuristic", metavar="POLICY",
                   help=f"behaviour policy: {' or '.join(POLICIES)} (default heuristic), or a directory "
                        "written by `esper train`")
    p.add_argument("--epsilon", type=float, default=0.1, help="exploration rate of the heuristic")
    p.add_argument("--counterfactual", type=float, metavar="P",
                   help="counterfactual labels: with P > 0 every episode gets a branch point at a dormant "
                        "slot, and each live stratum (training, blending, ramp complete) one with probability "
                        "P; there every valid action is rolled out (default 0.5 with the heuristic policy, "
                        "else 0)")
    p.add_argument("--counterfactual-epochs", type=int, default=COUNTERFACTUAL_EPOCHS, metavar="K",
                   help="horizon of each counterfactual rollout in epochs (default: to the episode's end)")
    p.add_argument("--counterfactual-continuation", default=CONTINUATIONS[0], choices=CONTINUATIONS,
                   help="what follows the branched action: replant (default: finish the live seed, and after "
                        "a CULL plant the cause's remedy) or commit (finish the live seed, nothing more)")
    p.add_argument("--hindsight-epochs", type=int, default=HINDSIGHT_EPOCHS, metavar="K",
                   help=f"epochs after a decision that hindsight looks at (default {HINDSIGHT_EPOCHS})")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario mix")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.generation.episode import GenerationSpec
    from pipelines.generation.generate import EpisodesFailed, generate
    from telemetry import load_config

    spec = GenerationSpec(
        config=load_config(args.profile, args.config, args.overrides),
        dataset=args.dataset, data_dir=args.data_dir, rng_seed=args.seed, epochs=args.epochs,
        device=args.device, policy=args.policy, epsilon=args.epsilon,
        counterfactual_fraction=_counterfactual(args), counterfactual_epochs=args.counterfactual_epochs,
        counterfactual_continuation=args.counterfactual_continuation,
        hindsight_epochs=args.hindsight_epochs,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()),
    )
    try:
        report = generate(spec, args.out, args.episodes, workers=args.workers, resume=args.resume,
                          show_progress=not args.quiet, engine=engine_options(args), keep_going=args.keep_going)
    except EpisodesFailed as exc:
        print(f"esper: error: {exc}", file=sys.stderr)
        return EXIT_EPISODES_FAILED
    print(f"{report.path}: {report.total} episodes ({report.added} generated in {report.seconds:.1f} s); "
          f"next: esper inspect {report.path}")
    return 0


def _counterfactual(args: argparse.Namespace) -> float:
    """Label-generating runs are the heuristic's; other policies branch only when asked."""
    if args.counterfactual is not None:
        return args.counterfactual
    return 0.5 if args.policy == "heuristic" else 0.0
