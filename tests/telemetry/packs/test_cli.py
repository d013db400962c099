"""`esper inspect | query | validate`: outputs, the query library (through the CLI and through a
bare DuckDB session), and bad input as one line with exit status 2."""

from __future__ import annotations

import csv
import io
import json
import shutil

import duckdb
import pytest
from support.packs import make_episodes, reference, write_pack
from telemetry.queries import library

from telemetry.cli import main
from telemetry.packs.manifest import read_manifest

README_VIEWS = """
CREATE VIEW steps AS SELECT * FROM read_parquet('{pack}/steps/**/*.parquet', hive_partitioning = true);
CREATE VIEW episodes AS SELECT * FROM read_parquet('{pack}/episodes/**/*.parquet', hive_partitioning = true);
CREATE VIEW decisions AS SELECT * FROM steps WHERE action <> 'WAIT';
"""


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pack"
    write_pack(path, make_episodes(0, 8, steps=6), commit_every=3)
    return path


@pytest.fixture(scope="module")
def minimal_pack(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "minimal"
    write_pack(path, make_episodes(0, 3, steps=4, profile="minimal"), profile="minimal")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_summarises_the_manifest(pack, capsys):
    code, out, _ = run(capsys, "inspect", str(pack))
    assert code == 0
    assert "profile     diagnostic (history 20" in out and "48 steps" in out and "8 episodes" in out
    code, out, _ = run(capsys, "inspect", str(pack), "--json")
    summary = json.loads(out)
    manifest = read_manifest(pack)
    assert summary["totals"] == {"episodes": 8, "steps": 48, "files": len(manifest.files),
                                 "bytes": sum(f.bytes for f in manifest.files)}
    assert summary["features"]["count"] == len(reference()[1])
    assert summary["profiles"]["research"]["in_pack"] is False
    assert summary["quick_stats"]["action_distribution"] == manifest.quick_stats.action_distribution


def test_query_accepts_sql_a_file_or_a_library_name(pack, capsys, tmp_path):
    sql = "SELECT count(*) AS n FROM steps"
    code, out, _ = run(capsys, "query", str(pack), sql, "--format", "csv")
    assert (code, out) == (0, "n\n48\n")
    (tmp_path / "count.sql").write_text("-- a comment\n" + sql + ";\n")
    assert run(capsys, "query", str(pack), str(tmp_path / "count.sql"), "--format", "csv")[1] == "n\n48\n"
    code, out, _ = run(capsys, "query", str(pack), "action_distribution", "--format", "json")
    rows = json.loads(out)
    unlabelled = sum(1 for _, steps in make_episodes(0, 8, steps=6) for s in steps if s["action"] is None)
    total = sum(r["steps"] for r in rows if r["split"] == "all")
    assert total == read_manifest(pack).quick_stats.steps - unlabelled


def test_json_output_is_valid_json_with_non_finite_values(pack, capsys):
    code, out, _ = run(capsys, "query", str(pack),
                       "SELECT 'NaN'::FLOAT AS a, '-inf'::DOUBLE AS b, [1.5, 'inf'::DOUBLE] AS c, NULL AS d",
                       "--format", "json")
    assert json.loads(out) == [{"a": "NaN", "b": "-Infinity", "c": [1.5, "Infinity"], "d": None}]


def test_table_output(pack, capsys):
    code, out, _ = run(capsys, "query", str(pack), "SELECT 1 AS one, 'x' AS letter, [1, 2] AS list")
    assert out.splitlines() == ["one  letter  list", "---  ------  ------", "  1  x       [1, 2]", "(1 row)"]


@pytest.mark.parametrize("name", sorted(library()))
def test_every_library_query_runs_through_the_cli_and_bare_duckdb(pack, minimal_pack, capsys, name):
    code, out, err = run(capsys, "query", str(pack), name, "--format", "csv")
    assert code == 0, err
    ours = list(csv.reader(io.StringIO(out)))
    con = duckdb.connect()
    con.execute(README_VIEWS.format(pack=pack))
    con.execute(library()[name])
    plain = [[d[0] for d in con.description]] + [[_csv(v) for v in row] for row in con.fetchall()]
    assert ours == plain
    assert run(capsys, "query", str(minimal_pack), name)[0] == 0  # runs on a pack of the smallest profile


def _csv(value) -> str:
    buffer = io.StringIO()
    from telemetry.packs.cli import _csv_value

    csv.writer(buffer, lineterminator="").writerow([_csv_value(value)])
    return next(csv.reader(io.StringIO(buffer.getvalue())))[0]


def test_library_queries_are_commented():
    assert len(library()) >= 6
    for name, sql in library().items():
        assert sql.lstrip().startswith("--"), name


@pytest.mark.parametrize(("argv", "message"), [
    (["query", "{pack}", "SELEC 1"], "query: Parser Error: syntax error"),
    (["query", "{pack}", "SELECT nope FROM steps"], 'Binder Error: Referenced column "nope" not found'),
    (["query", "{pack}", "missing_query.sql"], "no such file, and no query 'missing_query'"),
    (["query", "{tmp}/nowhere", "SELECT 1"], "nowhere: no such pack"),
    (["inspect", "{tmp}"], "not a pack (expected a directory holding manifest.json)"),
    (["validate", "{tmp}/nowhere"], "no such pack"),
])
def test_bad_input_is_one_line_and_exit_2(pack, tmp_path, capsys, argv, message):
    code, out, err = run(capsys, *[a.format(pack=pack, tmp=tmp_path) for a in argv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("esper: error: ") and message in err
    assert "Traceback" not in err


def test_a_newer_format_is_bad_input(pack, tmp_path, capsys):
    copy = shutil.copytree(pack, tmp_path / "copy", symlinks=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = "9.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for command in ("inspect", "validate"):
        code, _, err = run(capsys, command, str(copy))
        assert code == 2 and "format_version 9.0 is newer" in err


def test_validate_reports_one_line_per_problem(pack, tmp_path, capsys):
    copy = shutil.copytree(pack, tmp_path / "copy", symlinks=True)
    code, out, _ = run(capsys, "validate", str(copy))
    files = read_manifest(copy).files
    assert code == 0 and out.strip().endswith(f"sound ({len(files)} files, 8 episodes, 48 steps)")
    damaged, missing = copy / files[0].path, copy / files[1].path
    stray = damaged.with_name("part-999999-stray.parquet")
    shutil.copy(damaged, stray)
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0x01
    damaged.write_bytes(bytes(data))
    missing.unlink()
    code, out, _ = run(capsys, "validate", str(copy))
    lines = out.splitlines()
    assert code == 1
    assert any(str(damaged) in line and "sha256 does not match" in line for line in lines)
    assert any(str(missing) in line and "missing" in line for line in lines)
    assert any(str(stray) in line and "not listed in manifest.json" in line for line in lines)
    assert len(lines) == 3, lines


def test_validate_catches_rows_in_the_wrong_split(pack, tmp_path, capsys):
    copy = shutil.copytree(pack, tmp_path / "copy", symlinks=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["table"] == "episodes" and f["split"] == "train")
    wrong = entry["path"].replace("split=train", "split=test")
    (copy / wrong).parent.mkdir(parents=True, exist_ok=True)
    (copy / entry["path"]).rename(copy / wrong)
    entry.update(path=wrong, split="test")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = run(capsys, "validate", str(copy))
    assert code == 1 and "hashes to split 'train', not 'test'" in out


def test_a_damaged_or_missing_file_is_one_line_naming_it(pack, tmp_path, capsys):
    copy = shutil.copytree(pack, tmp_path / "copy", symlinks=True)
    entry = read_manifest(copy).files_of("steps")[0]
    data = bytearray((copy / entry.path).read_bytes())
    data[200] ^= 0x10
    (copy / entry.path).write_bytes(bytes(data))
    code, _, err = run(capsys, "query", str(copy), "action_distribution")
    assert code == 2 and entry.path in err and "sha256" in err and err.count("\n") == 1
    (copy / entry.path).unlink()
    code, _, err = run(capsys, "query", str(copy), "--no-verify", "SELECT 1")
    assert code == 2 and f"{entry.path}: listed in manifest.json but missing" in err
