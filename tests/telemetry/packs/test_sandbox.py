"""`esper query` is read-only: no statement writes into the pack or anywhere else, and none reads a
file the manifest does not list. Each escape a plain DuckDB connection allows is tried, through the
command and through the connection it uses, and the pack is byte-identical afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from support.packs import run_cli

from telemetry.errors import EsperError
from telemetry.packs.cli import query_library
from telemetry.packs.manifest import read_manifest
from telemetry.packs.reader import open_pack
from telemetry.packs.sandbox import check_read_only, read_only_connection


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def linked(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "pack", symlinks=True))


def escapes(pack: Path, tmp: Path, data: Path) -> dict[str, str]:
    """SQL that a plain connection would run; `data` is one of the pack's listed files."""
    return {
        "copy into the pack": f"COPY (SELECT * FROM steps) TO '{pack}/steps/split=train/evil.parquet'",
        "copy over a data file": f"COPY (SELECT 1) TO '{data}' (FORMAT parquet, USE_TMP_FILE false)",
        "explain analyze runs a copy": f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{data}' (USE_TMP_FILE false)",
        "attach a database": f"ATTACH '{tmp}/x.db' AS x",
        "create a table": "CREATE TABLE t AS SELECT 1",
        "replace a view": "CREATE OR REPLACE VIEW steps AS SELECT 1 AS x",
        "export": f"EXPORT DATABASE '{tmp}/export'",
        "switch the sandbox off": "SET enable_external_access = true",
        "install an extension": "INSTALL httpfs",
        "read a file outside": "SELECT * FROM read_csv('/etc/passwd')",
        "list a folder outside": "SELECT * FROM glob('/etc/*')",
        "glob the pack itself": f"SELECT count(*) FROM read_parquet('{pack}/steps/**/*.parquet')",
        "read a data file by name": f"SELECT count(*) FROM read_parquet('{pack}/steps/*/*.parquet')",
    }


@pytest.mark.parametrize("name", list(escapes(Path("p"), Path("t"), Path("d"))))
def test_each_escape_is_refused_in_one_line_and_changes_nothing(linked: Path, tmp_path: Path, name: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    sql = escapes(linked, tmp_path, linked / read_manifest(linked).files_of("steps")[0].path)[name]
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "query", str(linked), sql)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("esper: error: query: "), err
    assert "root:" not in err  # nothing of /etc/passwd
    assert snapshot(tmp_path) == before


def test_the_connection_itself_reads_only_the_listed_files(linked: Path, tmp_path: Path) -> None:
    """Even a statement that passed the kind check could not reach another file."""
    con = read_only_connection(open_pack(linked))
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", f"COPY (SELECT 1) TO '{tmp_path}/x.csv'",
                f"ATTACH '{tmp_path}/x.db'"):
        with pytest.raises(duckdb.Error, match="disabled by configuration"):
            con.execute(sql)
    with pytest.raises(duckdb.Error, match="Cannot change configuration"):
        con.execute("SET enable_external_access = true")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()
    steps = read_manifest(linked).quick_stats.steps
    assert con.execute("SELECT count(*) FROM steps").fetchall() == [(steps,)]


def test_reads_in_every_form_still_run(linked: Path) -> None:
    con = read_only_connection(open_pack(linked))
    for sql in ("SELECT count(*) FROM decisions", "DESCRIBE steps", "SHOW TABLES", "SUMMARIZE SELECT 1 AS x",
                "EXPLAIN SELECT * FROM episodes", "EXPLAIN ANALYZE SELECT count(*) FROM steps",
                "PRAGMA table_info('steps')", "CALL pragma_version()", "PIVOT steps ON split USING count(*)",
                "WITH e AS (SELECT * FROM episodes) SELECT count(*) FROM e", "FROM steps LIMIT 1"):
        statements = con.extract_statements(sql)
        check_read_only(con, statements)
        for statement in statements:
            con.execute(statement)
    for sql in ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", "BEGIN", "SET VARIABLE x = 1", "USE memory"):
        with pytest.raises(EsperError, match="only statements that read run on a pack"):
            check_read_only(con, con.extract_statements(sql))


def test_every_library_query_runs_read_only(linked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in query_library():
        code, _, err = run_cli(capsys, "query", str(linked), name)
        assert code == 0, (name, err)
