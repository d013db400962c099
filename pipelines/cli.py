"""The `esper` command: the library's commands plus those of each pipeline layer.

The library (telemetry/) never imports the pipelines, so the full command line is assembled here:
each layer registers its own subcommands beside the code it drives.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from telemetry.cli import Registrar, command_names, library_registrars, profiles_registrar, run


def _reference_host():
    from pipelines.environment.host import HostCNN
    from pipelines.environment.morphogenetic_env import SLOT

    return HostCNN(in_channels=3, num_classes=10, slots=(SLOT,))


def registrars() -> list[Registrar]:
    import functools

    from pipelines.experiment import cli as experiment_cli
    from pipelines.generation import cli as generation_cli
    from pipelines.generation.roll_in import roll_in
    from pipelines.training import cli as training_cli

    profiles = profiles_registrar(_reference_host, "the reference host (3x32x32 input, 10 classes)")
    # `esper train --dagger` rolls in episodes, but training never imports generation: handed in here
    train = functools.partial(training_cli.register, roll_in=roll_in)
    return [profiles, *library_registrars(), generation_cli.register, train, experiment_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    """A pack command (inspect, query, validate, ...) is parsed without the pipelines' commands, whose
    registration imports torch and the training stack: over a second of start-up it never uses."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    library = library_registrars()
    return run(words, library if command in command_names(library) else registrars())


if __name__ == "__main__":
    sys.exit(main())
