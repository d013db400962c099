"""The experiment commands: `esper compare`, `esper pool` and `esper control-check`."""

from __future__ import annotations

import argparse
import sys

from pipelines.environment.datasets import DATASETS, WITH_TEST_SPLIT
from pipelines.generation.cli import add_engine_arguments, engine_options
from pipelines.policies.learned_policy import MODELS
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
    p.add_argument("--dataset", choices=DATASETS, help=f"dataset of the episodes (default digits_hard{pack_s})")
    p.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    p.add_argument("--epochs", type=int, help=f"epochs per episode (default 25{pack_s})")
    p.add_argument("--seed", type=int,
                   help=f"run seed of the pack; online episodes use seed + 1 (default 0{pack_s})")
    p.add_argument("--counterfactual", type=float, metavar="P",
                   help="counterfactual labels: one dormant branch point per episode, and each live lifecycle "
                        f"stratum with probability P (default 0.5{pack_s})")
    p.add_argument("--counterfactual-epochs", type=int, metavar="K",
                   help=f"horizon of each rollout in epochs (default: to the episode's end{pack_s})")
    defaults = TrainOptions()
    p.add_argument("--model", choices=MODELS, default=defaults.model,
                   help="every arm's network: mlp (the current row) or gru (the episode's rows so far, the same "
                        f"history for both arms whatever their profiles; default {defaults.model})")
    p.add_argument("--hidden", type=int, default=defaults.hidden,
                   help=f"network width (default {defaults.hidden})")
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
    from pipelines.experiment.control_check import STRATEGIES, CheckSpec

    d = CheckSpec()
    c = sub.add_parser("control-check", help="does knowing the cause matter? paired strategies per cause, "
                                             "scored by the primary score")
    c.add_argument("--episodes", type=int, default=60, help="episodes, causes in rotation (default 60)")
    c.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per episode (default {d.epochs})")
    c.add_argument("--seed", type=int, default=0, help="run seed; episode e depends only on (seed, e)")
    c.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help=f"needs a held-out test split (default {d.dataset})")
    c.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    c.add_argument("--germinate-at", type=int, default=d.germinate_at,
                   help=f"epoch the fixed schedules germinate at (default {d.germinate_at})")
    c.add_argument("--train-epochs", type=int, default=d.train_epochs,
                   help=f"epochs a scheduled seed trains (default {d.train_epochs})")
    c.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated strategies to play (never is always included)")
    c.add_argument("--workers", type=int, default=1, help="episodes at once (default 1)")
    add_engine_arguments(c)
    c.add_argument("--results", metavar="FILE", help="also write every run's result here (JSON lines)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
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
        train=TrainOptions(hidden=args.hidden, max_epochs=args.max_epochs, patience=args.patience, model=args.model),
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
    import json

    from pipelines.experiment.control_check import STRATEGIES, CheckSpec, run_check, runs_of
    from pipelines.experiment.control_check_report import analyse, text
    from telemetry import EsperError

    chosen = {"never", *(s.strip() for s in args.strategies.split(",") if s.strip())}
    unknown = sorted(chosen - set(STRATEGIES))
    if unknown:
        raise EsperError(f"--strategies: unknown {unknown}; expected some of {', '.join(STRATEGIES)}")
    for name, least in (("episodes", 1), ("epochs", 2), ("workers", 1)):
        if getattr(args, name) < least:
            raise EsperError(f"--{name} must be >= {least}, got {getattr(args, name)}")
    if args.seed < 0:  # episode streams are numpy SeedSequences, which take non-negative integers only
        raise EsperError(f"--seed must be >= 0, got {args.seed}")
    if not 0 <= args.germinate_at < args.epochs - 1:
        raise EsperError(f"--germinate-at must be a decision epoch in [0, {args.epochs - 2}], "
                         f"got {args.germinate_at}")
    if args.dataset not in WITH_TEST_SPLIT:
        raise EsperError(f"--dataset {args.dataset} has no held-out test split, which the primary score reads; "
                         f"expected one of {', '.join(WITH_TEST_SPLIT)}")
    engine = engine_options(args)
    engine.check()
    spec = CheckSpec(rng_seed=args.seed, epochs=args.epochs, dataset=args.dataset, data_dir=args.data_dir,
                     germinate_at=args.germinate_at, train_epochs=args.train_epochs)
    runs = runs_of(args.episodes, chosen)
    results, seconds = run_check(spec, runs, args.workers, engine)
    if args.results:
        with open(args.results, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in results)
    analysis = analyse(results)
    analysis.update(seed=args.seed, epochs=args.epochs, dataset=args.dataset, workers=args.workers,
                    wall_seconds=seconds)
    print(json.dumps(analysis, indent=1, allow_nan=False) if args.json else
          text(analysis) + f"\n{len(runs)} runs in {seconds:.0f} s with {args.workers} workers")
    return 0
