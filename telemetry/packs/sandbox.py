"""SQL over a pack that can read the pack's files and nothing else, and write nothing: `esper query`.

A plain DuckDB connection runs whatever it is given: `COPY ... TO 'PACK/steps/split=train/x.parquet'`
plants a file every glob reads, `ATTACH` and `CREATE` write anywhere, `read_csv('/etc/passwd')` and
`glob('/etc/*')` read outside the pack. Two locks close that, each enough for what it covers:

- the connection: after the views exist, `allowed_paths` is set to exactly the files the manifest
  lists, `enable_external_access` is switched off (no other file, directory, extension or URL), and
  `lock_configuration` keeps a query from switching any of it back;
- the statements: only those that read run (SELECT and its forms DESCRIBE, SHOW, SUMMARIZE, PIVOT;
  PRAGMA and CALL of DuckDB's own functions; EXPLAIN of those). The allowed paths stay writable to
  DuckDB, so `COPY ... TO` one of the pack's own files (or `EXPLAIN ANALYZE COPY`, which runs it)
  would overwrite data: no statement of another kind runs at all.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from telemetry.errors import EsperError
from telemetry.packs.manifest import TABLES

if TYPE_CHECKING:
    import duckdb

    from telemetry.packs.reader import Pack

_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(?:ANALYZE\s+|ANALYSE\s+)?(.*)", re.IGNORECASE | re.DOTALL)


def read_only_connection(pack: Pack) -> duckdb.DuckDBPyConnection:
    """A new connection with the pack's views, locked down: it reads the listed files and nothing else."""
    con = pack.duckdb()
    files = [os.path.abspath(p) for table in TABLES for p in pack.files(table)]
    con.execute(f"SET allowed_paths = [{', '.join(_sql_string(f) for f in files)}]")
    for setting in ("autoinstall_known_extensions", "autoload_known_extensions", "enable_external_access"):
        con.execute(f"SET {setting} = false")
    con.execute("SET lock_configuration = true")
    return con


def _allowed() -> set[object]:
    import duckdb

    kinds = duckdb.StatementType
    return {kinds.SELECT, kinds.PRAGMA, kinds.CALL, kinds.MULTI}  # MULTI: PIVOT, expanded by the parser


def check_read_only(con: duckdb.DuckDBPyConnection, statements: list[duckdb.Statement]) -> None:
    """Refuse any statement that is not a read, in one line naming it (see the module docstring)."""
    import duckdb

    for statement in statements:
        kind = statement.type
        if kind == duckdb.StatementType.EXPLAIN:
            match = _EXPLAIN.fullmatch(statement.query)
            if match is not None and match.group(1).strip():
                check_read_only(con, con.extract_statements(match.group(1)))
                continue
        elif kind in _allowed():
            continue
        text = " ".join(statement.query.split())
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise EsperError(f"query: only statements that read run on a pack (SELECT, DESCRIBE, SHOW, PRAGMA, "
                         f"EXPLAIN); got {kind.name}: {shown}")


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
