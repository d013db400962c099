"""`esper generate`: the project's main job, annotated episodes into a pack."""

from __future__ import annotations

import argparse
import os

from pipelines.environment.datasets import DATASETS
from pipelines.environment.scenarios import SCENARIOS
from pipelines.generation.annotations import HINDSIGHT_EPOCHS
from pipelines.generation.episode import COUNTERFACTUAL_EPOCHS, POLICIES


def register(sub: argparse._SubParsersAction) -> None:
    from telemetry.cli import add_config_arguments, path_argument

    p = sub.add_parser("generate", help="run episodes of the morphogenetic environment into a pack")
    p.add_argument("--profile", default="diagnostic", help="telemetry profile (default: diagnostic)")
    p.add_argument("--episodes", type=int, required=True, help="episodes the pack should hold")
    p.add_argument("--out", required=True, metavar="PACK", type=path_argument,
                   help="pack directory to create (or resume)")
    p.add_argument("--workers", type=int, default=1,
                   help=f"parallel worker processes, one torch thread each (this machine: {os.cpu_count()} CPUs)")
    p.add_argument("--epochs", type=int, default=25, help="epochs per episode, epoch 0 included (default 25)")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    p.add_argument("--seed", type=int, default=0, help="run seed; episode i depends only on (seed, i)")
    add_config_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="complete an interrupted pack to --episodes")
    p.add_argument("--policy", default="heuristic", metavar="POLICY",
                   help=f"behaviour policy: {' or '.join(POLICIES)} (default heuristic), or a directory "
                        "written by `esper train`")
    p.add_argument("--epsilon", type=float, default=0.1, help="exploration rate of the heuristic")
    p.add_argument("--counterfactual", type=float, metavar="FRACTION",
                   help="share of decision steps branched to roll out every valid action "
                        "(default 0.1 with the heuristic policy, else 0)")
    p.add_argument("--counterfactual-epochs", type=int, default=COUNTERFACTUAL_EPOCHS, metavar="K",
                   help=f"epochs each counterfactual rollout runs (default {COUNTERFACTUAL_EPOCHS})")
    p.add_argument("--hindsight-epochs", type=int, default=HINDSIGHT_EPOCHS, metavar="K",
                   help=f"epochs after a decision that hindsight looks at (default {HINDSIGHT_EPOCHS})")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario mix")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.generation.episode import GenerationSpec
    from pipelines.generation.generate import generate
    from telemetry import load_config

    spec = GenerationSpec(
        config=load_config(args.profile, args.config, args.overrides),
        dataset=args.dataset, data_dir=args.data_dir, rng_seed=args.seed, epochs=args.epochs,
        device=args.device, policy=args.policy, epsilon=args.epsilon,
        counterfactual_fraction=_counterfactual(args), counterfactual_epochs=args.counterfactual_epochs,
        hindsight_epochs=args.hindsight_epochs,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()),
    )
    report = generate(spec, args.out, args.episodes, workers=args.workers, resume=args.resume,
                      show_progress=not args.quiet)
    print(f"{report.path}: {report.total} episodes ({report.added} generated in {report.seconds:.1f} s); "
          f"next: esper inspect {report.path}")
    return 0


def _counterfactual(args: argparse.Namespace) -> float:
    """Rollouts continue with the heuristic, so only heuristic runs branch unless asked otherwise."""
    if args.counterfactual is not None:
        return args.counterfactual
    return 0.1 if args.policy == "heuristic" else 0.0
