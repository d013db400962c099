"""The `esper` command line.

Every command meets bad input the same way: one line on stderr naming what was wrong and what was
expected, no traceback, exit status 2. Each subcommand lives beside the concept it drives; this file
only wires them together.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from telemetry import pack_cli
from telemetry.config import load_config, profile_names
from telemetry.errors import EsperError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EsperError(f"{self.prog}: {message}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of overrides applied to the profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set gradients.percentiles=[1,50,99] (repeatable)")


def _reference_host():
    from pipelines.host import HostCNN

    return HostCNN(in_channels=3, num_classes=10)


def cmd_profiles_list(args: argparse.Namespace) -> int:
    from telemetry.feature_schema import build_feature_schema

    host = _reference_host()
    for name in profile_names():
        schema = build_feature_schema(load_config(name), host, num_classes=10)
        print(f"{name:<12} {len(schema):>4} features")
    return 0


def cmd_profiles_show(args: argparse.Namespace) -> int:
    from telemetry.feature_schema import build_feature_schema

    config = load_config(args.name, args.config, args.overrides)
    schema = build_feature_schema(config, _reference_host(), num_classes=10)
    if args.json:
        print(json.dumps({"config": config.model_dump(mode="json"),
                          "features": schema.to_dict()["features"]}, indent=2))
        return 0
    import yaml

    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
    print(f"\nfeatures for the reference host (3x32x32 input, 10 classes): {len(schema)}")
    for group, names in schema.groups().items():
        print(f"  {group:<15} {len(names):>4}")
    return 0


def _profiles_parser(sub: argparse._SubParsersAction) -> None:
    profiles = sub.add_parser("profiles", help="list and show telemetry profiles")
    psub = profiles.add_subparsers(dest="profiles_command", required=True, parser_class=_Parser)
    psub.add_parser("list", help="profiles and their feature counts").set_defaults(func=cmd_profiles_list)
    show = psub.add_parser("show", help="a resolved profile and its features")
    show.add_argument("name")
    add_config_arguments(show)
    show.add_argument("--json", action="store_true", help="config and the full ordered feature list as JSON")
    show.set_defaults(func=cmd_profiles_show)


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommand builders; each lives with the part of the project it drives."""
    from pipelines import compare_cli, generate_cli, train_cli

    return [_profiles_parser, pack_cli.register, generate_cli.register, train_cli.register, compare_cli.register]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="esper", description="Telemetry and training-episode packs for morphogenetic policies.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
