"""The experiment commands: `esper compare`, `esper pool` and `esper control-check`."""

from __future__ import annotations

import argparse
import os
import sys

from pipelines.environment.datasets import DATASETS
from pipelines.generation.cli import add_engine_arguments, engine_options
from pipelines.generation.episode import COUNTERFACTUAL_EPOCHS
from pipelines.training.train import TARGETS, TrainOptions
from telemetry.cli import path_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="does a richer profile make a better policy? train, evaluate, report")
    p.add_argument("--baseline", default="minimal", help="profile whose features the baseline sees (default minimal)")
    p.add_argument("--candidate", default="diagnostic",
                   help="profile of the pack and the candidate (default diagnostic)")
    p.add_argument("--episodes", type=int, help="episodes in the training pack (needed unless --pack is given)")
    p.add_argument("--seeds", type=int, required=True, help="models trained per arm")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", type=path_argument,
                   help="report folder (an interrupted run resumes)")
    p.add_argument("--pack", metavar="PACK", type=path_argument,
                   help="reuse this candidate-profile pack instead of generating one")
    p.add_argument("--target", default="oracle", choices=TARGETS, help="training target (default oracle)")
    p.add_argument("--online-episodes", type=int, default=40, metavar="M",
                   help="fresh episodes each policy drives (default 40)")
    p.add_argument("--workers", type=int, default=1, help="parallel episode workers")
    add_engine_arguments(p)
    pack_s = "; with --pack, the pack's, and another value is refused"
    p.add_argument("--dataset", choices=DATASETS, help=f"dataset of the episodes (default digits{pack_s})")
    p.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    p.add_argument("--epochs", type=int, help=f"epochs per episode (default 25{pack_s})")
    p.add_argument("--seed", type=int,
                   help=f"run seed of the pack; online episodes use seed + 1 (default 0{pack_s})")
    p.add_argument("--counterfactual", type=float, metavar="FRACTION",
                   help=f"share of steps branched for oracle labels (default 0.1{pack_s})")
    p.add_argument("--counterfactual-epochs", type=int, metavar="K",
                   help=f"epochs each rollout runs (default {COUNTERFACTUAL_EPOCHS}{pack_s})")
    defaults = TrainOptions()
    p.add_argument("--hidden", type=int, default=defaults.hidden, help=f"MLP width (default {defaults.hidden})")
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs,
                   help=f"training epochs at most, per model (default {defaults.max_epochs})")
    p.add_argument("--patience", type=int, default=defaults.patience,
                   help=f"epochs without a lower validation loss before stopping (default {defaults.patience})")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_compare)

    q = sub.add_parser("pool", help="read replicates of `esper compare` (different --seed) as one answer")
    q.add_argument("reports", nargs="+", metavar="REPORT_DIR", type=path_argument)
    q.add_argument("--json", action="store_true", help="the pooled summaries as JSON instead of a table")
    q.set_defaults(func=cmd_pool)

    _register_control_check(sub)


def _register_control_check(sub: argparse._SubParsersAction) -> None:
    from pipelines.environment.scenarios import SCENARIOS
    from pipelines.experiment.control_check import STRATEGIES

    c = sub.add_parser("control-check", help="do the decisions matter? fixed strategies per cause, paired")
    c.add_argument("--episodes", type=int, default=30, help="episodes, causes in rotation (default 30)")
    c.add_argument("--epochs", type=int, default=25, help="epochs per episode (default 25)")
    c.add_argument("--seed", type=int, default=0, help="run seed; episode e depends only on (seed, e)")
    c.add_argument("--dataset", default="digits", choices=DATASETS)
    c.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    c.add_argument("--germinate-at", type=int, default=4, help="epoch the schedules germinate at (default 4)")
    c.add_argument("--train-epochs", type=int, default=3, help="epochs a scheduled seed trains (default 3)")
    c.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated causes (default: all)")
    c.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated strategies to play (never is always included)")
    c.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    c.set_defaults(func=cmd_control_check)


def cmd_compare(args: argparse.Namespace) -> int:
    from pipelines.experiment.compare import CompareSpec, run_compare
    from pipelines.experiment.report import verdict, write_report

    spec = CompareSpec(
        baseline=args.baseline, candidate=args.candidate, episodes=args.episodes, seeds=args.seeds,
        target=args.target, online_episodes=args.online_episodes, dataset=args.dataset, data_dir=args.data_dir,
        epochs=args.epochs, seed=args.seed, workers=args.workers, engine=engine_options(args),
        counterfactual_fraction=args.counterfactual,
        counterfactual_epochs=args.counterfactual_epochs,
        train=TrainOptions(hidden=args.hidden, max_epochs=args.max_epochs, patience=args.patience),
    )
    say = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    results = run_compare(spec, args.out, pack=args.pack, say=say, show_progress=not args.quiet)
    say("[5/5] report")
    path = write_report(results, args.out)
    print(path)
    print(verdict(results))
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    import json

    from pipelines.experiment.pool import markdown, pool, read_results

    pooled = pool([read_results(r) for r in args.reports], list(args.reports))
    print(json.dumps(pooled, indent=2, allow_nan=False) if args.json else markdown(pooled))
    return 0


def cmd_control_check(args: argparse.Namespace) -> int:
    from pipelines.environment.scenarios import SCENARIOS
    from pipelines.experiment.control_check import STRATEGIES, Job, run
    from telemetry import EsperError

    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    chosen = {"never", *(s.strip() for s in args.strategies.split(",") if s.strip())}
    unknown = sorted(chosen - set(STRATEGIES))
    if unknown:
        raise EsperError(f"--strategies: unknown {unknown}; expected some of {', '.join(STRATEGIES)}")
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not scenarios:
        raise EsperError(f"--scenarios: {bad[0] if bad else 'empty'!r} is not a cause; "
                         f"expected a comma-separated subset of {', '.join(SCENARIOS)}")
    for name in ("episodes", "epochs", "workers"):
        if getattr(args, name) < (2 if name == "epochs" else 1):
            raise EsperError(f"--{name} must be >= {2 if name == 'epochs' else 1}, got {getattr(args, name)}")
    if args.seed < 0:  # episode streams are numpy SeedSequences, which take non-negative integers only
        raise EsperError(f"--seed must be >= 0, got {args.seed}")
    job = Job(0, "never", args.seed, args.epochs, args.dataset, args.data_dir, args.germinate_at,
              args.train_epochs, scenarios)
    text, seconds, runs = run(args.episodes, chosen, job, args.workers)
    print(text)
    print(f"\n{runs} episode runs in {seconds:.0f} s with {args.workers} workers "
          f"({seconds * args.workers / runs:.2f} s per episode per worker)")
    return 0
