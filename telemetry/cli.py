"""The pieces of the `esper` command line that belong to the library, and the one guard around it.

Every command meets bad input the same way: one line on stderr naming what was wrong and what was
expected, no traceback, exit status 2. `run` applies that to any set of subcommands; each
subcommand is registered by the part of the project it drives. The library's own commands are
`esper inspect | query | validate` (telemetry/packs/cli.py) and `esper profiles`, which needs a
model to count features on and so takes it from whoever assembles the CLI. The full `esper`
command (with generation, training and the experiments) is assembled in `pipelines/cli.py`;
`python -m telemetry` runs the library's pack commands alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from telemetry.config import load_config, profile_names
from telemetry.errors import EsperError

if TYPE_CHECKING:
    from torch import nn

EXIT_BAD_INPUT = 2

Registrar = Callable[[argparse._SubParsersAction], None]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EsperError(f"{self.prog}: {message}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of overrides applied to the profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set gradients.percentiles=[1,50,99] (repeatable)")


def profiles_registrar(reference_model: Callable[[], nn.Module], described_as: str) -> Registrar:
    """`esper profiles list | show`, counting features on `reference_model()` with 10 classes."""

    def cmd_list(args: argparse.Namespace) -> int:
        from telemetry.feature_schema import build_feature_schema

        host = reference_model()
        for name in profile_names():
            schema = build_feature_schema(load_config(name), host, num_classes=10)
            print(f"{name:<12} {len(schema):>4} features")
        return 0

    def cmd_show(args: argparse.Namespace) -> int:
        from telemetry.feature_schema import build_feature_schema

        config = load_config(args.name, args.config, args.overrides)
        schema = build_feature_schema(config, reference_model(), num_classes=10)
        if args.json:
            print(json.dumps({"config": config.model_dump(mode="json"),
                              "features": schema.to_dict()["features"]}, indent=2))
            return 0
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
        print(f"\nfeatures for {described_as}: {len(schema)}")
        for group, names in schema.groups().items():
            print(f"  {group:<15} {len(names):>4}")
        return 0

    def register(sub: argparse._SubParsersAction) -> None:
        profiles = sub.add_parser("profiles", help="list and show telemetry profiles")
        psub = profiles.add_subparsers(dest="profiles_command", required=True, parser_class=_Parser)
        psub.add_parser("list", help="profiles and their feature counts").set_defaults(func=cmd_list)
        show = psub.add_parser("show", help="a resolved profile and its features")
        show.add_argument("name")
        add_config_arguments(show)
        show.add_argument("--json", action="store_true", help="config and the full ordered feature list as JSON")
        show.set_defaults(func=cmd_show)

    return register


def build_parser(registrars: Sequence[Registrar]) -> argparse.ArgumentParser:
    parser = _Parser(prog="esper", description="Telemetry and training-episode packs for morphogenetic policies.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in registrars:
        register(sub)
    return parser


def run(argv: Sequence[str] | None, registrars: Sequence[Registrar]) -> int:
    """Parse and run one command; bad input becomes one line on stderr and exit status 2."""
    try:
        args = build_parser(registrars).parse_args(argv)
        return args.func(args)
    except EsperError as exc:
        print(f"esper: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a path given that cannot be created, read or written (not a directory, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"esper: error: {where}{' '.join((exc.strerror or str(exc)).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("esper: interrupted", file=sys.stderr)
        return 130


def library_registrars() -> list[Registrar]:
    from telemetry.packs import cli as pack_cli

    return [pack_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    """The library's commands alone (`esper inspect | query | validate`)."""
    return run(argv, library_registrars())


if __name__ == "__main__":
    sys.exit(main())
