"""The pieces of the `esper` command line that belong to the library, and the one guard around it.

Every command meets bad input the same way: one line on stderr naming what was wrong and what was
expected, no traceback, exit status 2. Anything else that escapes a command (a bug) is one line
too, naming the command and the exception, with exit status 1; the global `--debug` adds the
traceback. Ctrl-C and SIGTERM print "interrupted" and exit 130 and 143, after the command's own
clean-up ran. `run` applies that to any set of subcommands; each
subcommand is registered by the part of the project it drives. The library's own commands are
`esper inspect | query | validate` (telemetry/packs/cli.py) and `esper profiles`, which needs a
model to count features on and so takes it from whoever assembles the CLI. The full `esper`
command (with generation, training and the experiments) is assembled in `pipelines/cli.py`;
`python -m telemetry` runs the library's pack commands alone.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from telemetry.config import load_config, profile_names
from telemetry.errors import EsperError

if TYPE_CHECKING:
    from torch import nn

EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM

Registrar = Callable[[argparse._SubParsersAction], None]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise EsperError(f"{self.prog}: {message}")


def path_argument(text: str) -> str:
    """argparse type of every path option: an empty string would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", type=path_argument,
                        help="YAML file of overrides applied to the profile")
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
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an internal error (before the command: esper --debug CMD)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in registrars:
        register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the command cleans up as on Ctrl-C."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# every character str.splitlines() breaks a line at, besides \n and \r: a terminal or a log reader may too
_LINE_BREAKS = str.maketrans({c: f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                              for c in "\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def _one_line(text: str) -> str:
    """A message as one stderr line, whatever it quotes (a path, SQL or an argument with a line break)."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text.translate(_LINE_BREAKS)


def _error(message: str) -> None:
    print(f"esper: error: {_one_line(message)}", file=sys.stderr)


def _command(args: argparse.Namespace | None) -> str:
    if args is None:
        return "esper"
    words = [getattr(args, "command", None), getattr(args, f"{getattr(args, 'command', '')}_command", None)]
    return " ".join(w for w in words if isinstance(w, str)) or "esper"


def run(argv: Sequence[str] | None, registrars: Sequence[Registrar]) -> int:
    """Parse and run one command: bad input is one stderr line and exit status 2, a bug one line and 1."""
    args: argparse.Namespace | None = None
    if hasattr(sys.stdout, "reconfigure"):  # a path that is not UTF-8 prints as the bytes it was
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        with _sigterm_interrupts():
            args = build_parser(registrars).parse_args(argv)
            return args.func(args)
    except EsperError as exc:
        _error(str(exc))
        if getattr(args, "debug", False):
            traceback.print_exc()
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a path given that cannot be created, read or written (not a directory, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{' '.join((exc.strerror or str(exc)).split())}")
        if getattr(args, "debug", False):
            traceback.print_exc()
        return EXIT_BAD_INPUT
    except Terminated:
        print("esper: interrupted (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("esper: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place any bug becomes one line instead of a traceback
        cause = " ".join(str(exc).split())[:300] or "no message"
        _error(f"{_command(args)}: internal error ({type(exc).__name__}: {cause})"
               + ("" if getattr(args, "debug", False) else "; `esper --debug ...` prints the traceback"))
        if getattr(args, "debug", False):
            traceback.print_exc()
        return EXIT_INTERNAL


def command_names(registrars: Sequence[Registrar]) -> set[str]:
    """The commands `registrars` add, e.g. to run a pack command without importing what it never uses."""
    parser = build_parser(registrars)
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def library_registrars() -> list[Registrar]:
    from telemetry.packs import cli as pack_cli

    return [pack_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    """The library's commands alone (`esper inspect | query | validate`)."""
    return run(argv, library_registrars())


if __name__ == "__main__":
    sys.exit(main())
