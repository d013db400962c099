"""`esper compare`: baseline vs candidate feature sets, trained and evaluated on the same episodes."""

from __future__ import annotations

import argparse
import sys

from pipelines.datasets import DATASETS
from pipelines.episode import COUNTERFACTUAL_EPOCHS
from pipelines.train import TARGETS, TrainOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="does a richer profile make a better policy? train, evaluate, report")
    p.add_argument("--baseline", default="minimal", help="profile whose features the baseline sees (default minimal)")
    p.add_argument("--candidate", default="diagnostic",
                   help="profile of the pack and the candidate (default diagnostic)")
    p.add_argument("--episodes", type=int, help="episodes in the training pack (needed unless --pack is given)")
    p.add_argument("--seeds", type=int, required=True, help="models trained per arm")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder (an interrupted run resumes)")
    p.add_argument("--pack", metavar="PACK", help="reuse this candidate-profile pack instead of generating one")
    p.add_argument("--target", default="oracle", choices=TARGETS, help="training target (default oracle)")
    p.add_argument("--online-episodes", type=int, default=40, metavar="M",
                   help="fresh episodes each policy drives (default 40)")
    p.add_argument("--workers", type=int, default=1, help="parallel episode workers")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", metavar="DIR", help="where CIFAR-10's python batch files are")
    p.add_argument("--epochs", type=int, default=25, help="epochs per episode (default 25)")
    p.add_argument("--seed", type=int, default=0, help="run seed of the pack; online episodes use seed + 1")
    p.add_argument("--counterfactual", type=float, default=0.1, metavar="FRACTION",
                   help="share of steps branched for oracle labels (default 0.1)")
    p.add_argument("--counterfactual-epochs", type=int, default=COUNTERFACTUAL_EPOCHS, metavar="K",
                   help=f"epochs each rollout runs (default {COUNTERFACTUAL_EPOCHS})")
    defaults = TrainOptions()
    p.add_argument("--hidden", type=int, default=defaults.hidden, help=f"MLP width (default {defaults.hidden})")
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs,
                   help=f"training epochs at most, per model (default {defaults.max_epochs})")
    p.add_argument("--patience", type=int, default=defaults.patience,
                   help=f"epochs without a lower validation loss before stopping (default {defaults.patience})")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_compare)

    q = sub.add_parser("pool", help="read replicates of `esper compare` (different --seed) as one answer")
    q.add_argument("reports", nargs="+", metavar="REPORT_DIR")
    q.add_argument("--json", action="store_true", help="the pooled summaries as JSON instead of a table")
    q.set_defaults(func=cmd_pool)


def cmd_compare(args: argparse.Namespace) -> int:
    from pipelines.compare import CompareSpec, run_compare
    from pipelines.report import verdict, write_report

    spec = CompareSpec(
        baseline=args.baseline, candidate=args.candidate, episodes=args.episodes, seeds=args.seeds,
        target=args.target, online_episodes=args.online_episodes, dataset=args.dataset, data_dir=args.data_dir,
        epochs=args.epochs, seed=args.seed, workers=args.workers, counterfactual_fraction=args.counterfactual,
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

    from pipelines.pool import markdown, pool, read_results

    pooled = pool([read_results(r) for r in args.reports], list(args.reports))
    print(json.dumps(pooled, indent=2, allow_nan=False) if args.json else markdown(pooled))
    return 0
