"""Packaged SQL query library (installed as telemetry.queries).

Each `NAME.sql` is one commented query over the views `steps`, `episodes` and `decisions`; it runs
through `esper query PACK NAME` or in a bare DuckDB session once the views exist (see README.md).
"""

from __future__ import annotations

from importlib import resources


def library() -> dict[str, str]:
    """Query name (file name without `.sql`) -> SQL text, sorted by name."""
    files = [f for f in resources.files(__name__).iterdir() if f.name.endswith(".sql")]
    return {f.name[: -len(".sql")]: f.read_text(encoding="utf-8")
            for f in sorted(files, key=lambda f: f.name)}
