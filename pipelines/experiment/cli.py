"""The experiment commands: `esper compare` and `esper control-check`."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.environment.datasets import DATASETS, WITH_TEST_SPLIT
from pipelines.generation.cli import add_engine_arguments, engine_options
from pipelines.policies.learned_policy import MODELS
from pipelines.training.train import TARGETS, TrainOptions
from telemetry.cli import path_argument

PILOT_REPLICATES = 3


def register(sub: argparse._SubParsersAction) -> None:
    from pipelines.experiment.compare import CompareSpec

    d = CompareSpec()
    p = sub.add_parser("compare", help="does a richer profile make a better policy? replicates of the whole "
                                       "pipeline, one shared evaluation set, one primary measure")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", type=path_argument,
                   help="report folder (an interrupted run resumes; --replicates may grow)")
    p.add_argument("--replicates", type=int, help=f"independent packs and models (default {d.replicates}, "
                                                   f"{PILOT_REPLICATES} with --pilot)")
    p.add_argument("--pilot", action="store_true",
                   help="a small first run: reports the replicates a full run needs, no verdict")
    p.add_argument("--baseline", default=d.baseline, help=f"profile of the baseline arm (default {d.baseline})")
    p.add_argument("--candidate", default=d.candidate,
                   help=f"profile of the packs and the candidate arm (default {d.candidate})")
    p.add_argument("--ablation", default=d.ablation,
                   help=f"feature selection of the ablation arm: profiles and groups, comma-separated "
                        f"(default {d.ablation})")
    p.add_argument("--episodes", type=int, default=d.episodes,
                   help=f"episodes in each replicate's training pack (default {d.episodes})")
    p.add_argument("--seeds", type=int, default=d.seeds, help=f"models per arm per replicate (default {d.seeds})")
    p.add_argument("--eval-per-cause", type=int, default=d.eval_per_cause, metavar="M",
                   help=f"shared evaluation episodes per cause (default {d.eval_per_cause})")
    p.add_argument("--target", default=d.target, choices=TARGETS, help=f"training target (default {d.target})")
    p.add_argument("--workers", type=int, default=1, help="parallel episode workers")
    add_engine_arguments(p)
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help=f"dataset of the episodes; needs a held-out test split (default {d.dataset})")
    p.add_argument("--data-dir", metavar="DIR", type=path_argument, help="where CIFAR-10's python batch files are")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per episode (default {d.epochs})")
    p.add_argument("--seed", type=int, default=d.seed, help="replicate r's pack has run seed SEED + r (default 0)")
    p.add_argument("--counterfactual", type=float, metavar="P", default=d.counterfactual_fraction,
                   help="counterfactual labels in the packs (needed by --target oracle/advantage; "
                        f"default {d.counterfactual_fraction})")
    p.add_argument("--counterfactual-epochs", type=int, metavar="K",
                   help="horizon of each rollout in epochs (default: to the episode's end)")
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
    from pipelines.experiment.report import write_report

    replicates = args.replicates if args.replicates is not None else (
        PILOT_REPLICATES if args.pilot else CompareSpec().replicates)
    spec = CompareSpec(
        baseline=args.baseline, candidate=args.candidate, ablation=args.ablation, replicates=replicates,
        episodes=args.episodes, seeds=args.seeds, target=args.target, eval_per_cause=args.eval_per_cause,
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed, workers=args.workers,
        engine=engine_options(args), counterfactual_fraction=args.counterfactual,
        counterfactual_epochs=args.counterfactual_epochs, pilot=args.pilot,
        train=TrainOptions(hidden=args.hidden, max_epochs=args.max_epochs, patience=args.patience, model=args.model),
    )
    say = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    results = run_compare(spec, args.out, say=say, show_progress=not args.quiet)
    path = write_report(results, args.out)
    print(path)
    print(json.loads((path.parent / "summary.json").read_text())["verdict"])
    return 0


def cmd_control_check(args: argparse.Namespace) -> int:
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
