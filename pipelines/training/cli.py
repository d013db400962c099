"""`esper train`: a policy from a pack, saved with its features, normalization and provenance.

With `--dagger ROUNDS` (target expert) the policy is trained by DAgger (dagger.py): the roll-ins it
needs come from generation, which this layer does not import; `pipelines/cli.py` hands them in as
`register(sub, roll_in=...)`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.training.dagger import RollIn

from pipelines.policies.learned_policy import MODELS
from pipelines.training.train import TARGETS, TrainOptions
from telemetry.cli import path_argument


def register(sub: argparse._SubParsersAction, roll_in: RollIn | None = None) -> None:
    p = sub.add_parser("train", help="train a policy on a pack's decision steps")
    p.add_argument("pack", metavar="PACK", type=path_argument)
    p.add_argument("--features", required=True, metavar="SELECTION",
                   help="a profile (slices the pack to that profile's features), 'all', groups or feature "
                        "names, comma-separated")
    p.add_argument("--target", required=True, choices=TARGETS,
                   help="heuristic: imitate the behaviour policy; oracle: the counterfactual best action; "
                        "advantage: regress every stored action value's advantage over WAIT; expert: the "
                        "privileged expert's action (with --dagger, also on the states the learner reaches)")
    p.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp: the current row alone (default); gru: the episode's rows up to the current one")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", type=path_argument,
                   help="directory to write (must not exist)")
    p.add_argument("--seed", type=int, default=0)
    defaults = TrainOptions()
    p.add_argument("--hidden", type=int, default=defaults.hidden, help="hidden layer width")
    p.add_argument("--layers", type=int, default=defaults.layers, help="hidden layers")
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    p.add_argument("--patience", type=int, default=defaults.patience,
                   help="epochs without a lower validation loss before stopping")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--dagger", type=int, metavar="ROUNDS",
                   help="DAgger with --target expert: ROUNDS times, roll in fresh episodes with the latest learner, "
                        "have the expert label them and retrain on everything (work kept in MODEL_DIR/dagger)")
    p.add_argument("--dagger-episodes", type=int, default=20, metavar="N", help="roll-in episodes per round (20)")
    p.add_argument("--dagger-workers", type=int, default=1, metavar="W", help="roll-in episodes at once (1)")
    p.set_defaults(func=cmd_train, roll_in=roll_in)


def cmd_train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from pipelines.policies.learned_policy import PolicyError
    from pipelines.training.dagger import WORK
    from pipelines.training.train import train_policy
    from telemetry.packs import open_pack

    out = Path(args.out)
    dagger = _dagger_spec(args)
    if out.is_symlink():
        raise PolicyError(f"--out {out}: a symbolic link (to {os.readlink(out)!r}); expected an absent or empty "
                          "directory")
    resumable = {WORK} if dagger is not None else set()  # an interrupted DAgger run's work folder
    if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - resumable):
        raise PolicyError(f"--out {out}: exists and is not empty; choose another directory")
    options = TrainOptions(hidden=args.hidden, layers=args.layers, max_epochs=args.max_epochs,
                           patience=args.patience, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, model=args.model)
    options.check()
    selection = [s.strip() for s in args.features.split(",") if s.strip()]
    features = selection[0] if len(selection) == 1 else selection
    if dagger is not None:
        result = _run_dagger(args, dagger, features, options)
    else:
        result = train_policy(open_pack(args.pack), features, args.target, rng_seed=args.seed, options=options)
        result.policy.save(out)
    print(f"{out}: {len(result.policy.feature_names)} features, target {args.target}, model {args.model}, "
          f"{result.epochs_run} epochs (best {result.best_epoch})")
    for split, report in result.evaluation.items():
        print(format_report(split, report, result.policy.actions))
        lost = result.policy.meta["evaluation"][split].get("regret")
        if lost is not None:
            print(f"  mean regret (value lost against the best stored action): {lost:.4f}")
    return 0


def _dagger_spec(args: argparse.Namespace):
    """The DAgger settings, checked before anything is read or written; None without --dagger."""
    from pipelines.training.dagger import DaggerSpec
    from pipelines.training.train import TrainError

    if args.dagger is None:
        return None
    spec = DaggerSpec(rounds=args.dagger, episodes=args.dagger_episodes)
    spec.check(args.target)
    if args.dagger_workers < 1:
        raise TrainError(f"--dagger-workers must be >= 1, got {args.dagger_workers}")
    if args.roll_in is None:
        raise TrainError("--dagger: this command line cannot generate roll-in episodes; run it as `esper train`")
    return spec


def _run_dagger(args: argparse.Namespace, spec, features, options):
    import functools

    from pipelines.training.dagger import run_dagger
    from telemetry.packs import open_pack

    roll_in = functools.partial(args.roll_in, workers=args.dagger_workers)
    return run_dagger(open_pack(args.pack), features, spec, args.out, roll_in, rng_seed=args.seed, options=options)


def format_report(split: str, report, actions: list[str]) -> str:
    """Balanced accuracy, per-action recall and the confusion matrix as plain text."""
    lines = [f"{split}: {report.rows} steps, balanced accuracy {_pct(report.balanced_accuracy)}, "
             f"accuracy {_pct(report.accuracy)}"]
    width = max(len(a) for a in actions)
    header = "true action / predicted"
    lines.append(f"  {header:<{width + 2}}  " + " ".join(f"{i:>5}" for i in range(len(actions))) + "  recall")
    for i, (name, row) in enumerate(zip(actions, report.confusion, strict=True)):
        lines.append(f"  {i} {name:<{width}}  " + " ".join(f"{c:>5}" for c in row)
                     + f"  {_pct(report.recall[name])}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"
