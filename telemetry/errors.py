"""One exception family, so every entry point can turn bad input into one clear line.

Each error carries a complete, single-line message naming what was wrong and what was expected;
the CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class EsperError(Exception):
    """Bad input from a user: printed as one line, never as a traceback."""


class ConfigError(EsperError):
    """A telemetry profile, override file or --set assignment is invalid."""


class SchemaError(EsperError):
    """The feature schema cannot be built for this model (unknown layer, clashing names)."""


class PackError(EsperError):
    """A pack is missing, damaged, or does not match what was asked of it."""
