"""`esper inspect | query | validate`: a pack from the command line.

Bad input (a missing pack, a directory that is not a pack, bad SQL, a manifest of a newer format)
is an EsperError, which the CLI prints as one line with exit status 2. A pack that opens but is
damaged is what `validate` reports: one line per problem, exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telemetry.cli import path_argument
from telemetry.errors import EsperError

if TYPE_CHECKING:
    from telemetry.packs.manifest import Manifest

EXIT_PROBLEMS = 1
_CELL_WIDTH = 48


def register(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser("inspect", help="summary of a pack: config, counts, quick stats, files")
    inspect.add_argument("pack", metavar="PACK", type=path_argument)
    inspect.add_argument("--json", action="store_true", help="the summary as one JSON object")
    inspect.set_defaults(func=cmd_inspect)

    query = sub.add_parser("query", help="SQL over a pack's views steps, episodes and decisions (read-only: "
                                         "no other file is read, nothing is written)")
    query.add_argument("pack", metavar="PACK", type=path_argument)
    query.add_argument("sql", metavar="SQL_OR_FILE",
                       help="SQL text, a .sql file, or a query-library name such as action_distribution")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    query.add_argument("--no-verify", dest="verify", action="store_false",
                       help="skip the sha256 pass over the pack's files (sizes are still checked)")
    query.set_defaults(func=cmd_query)

    validate = sub.add_parser("validate", help="check every file against the manifest (exit 1 on problems)")
    validate.add_argument("pack", metavar="PACK", type=path_argument)
    validate.set_defaults(func=cmd_validate)

    from telemetry.packs import explain, report
    from telemetry.packs.repair import cmd_repair

    repair = sub.add_parser("repair", help="restore the links of a copy that lost or followed them "
                                           "(rsync -r, cp -rL, zip) and add a missing dataset card")
    repair.add_argument("pack", metavar="PACK")
    repair.set_defaults(func=cmd_repair)
    report.register(sub)
    explain.register(sub)


# ---- inspect -------------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    from telemetry.packs.manifest import read_manifest

    summary = pack_summary(args.pack, read_manifest(args.pack))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(_render_summary(summary))
    return 0


def pack_summary(path: str, manifest: Manifest) -> dict[str, Any]:
    """What a person wants to know about a pack before using it (the manifest minus bulk)."""
    from telemetry.packs.quick_stats import QuickStats

    stats = manifest.quick_stats
    splits = {}
    for name, fraction in manifest.splits.items():
        files = [f for f in manifest.files if f.split == name]
        s = manifest.split_stats.get(name) or QuickStats()
        splits[name] = {"fraction": fraction, "episodes": s.episodes, "steps": s.steps,
                        "files": len(files), "bytes": sum(f.bytes for f in files)}
    features = manifest.feature_schema
    return {
        "pack": str(path),
        "pack_id": manifest.pack_id,
        "format_version": manifest.format_version,
        "commit": manifest.commit,
        "created_at": manifest.created_at.isoformat(),
        "committed_at": manifest.committed_at.isoformat(),
        "telemetry_config": manifest.telemetry_config.model_dump(mode="json"),
        "features": {"count": len(features.features),
                     "groups": {g: len(names) for g, names in features.groups.items()}},
        "profiles": {p: {"features": len(names), "in_pack": all(n in features.index for n in names)}
                     for p, names in manifest.profiles.items()},
        "actions": manifest.actions,
        "splits": splits,
        "totals": {"episodes": stats.episodes, "steps": stats.steps, "files": len(manifest.files),
                   "bytes": sum(f.bytes for f in manifest.files)},
        "quick_stats": stats.model_dump(mode="json"),
        "files": [f.model_dump(mode="json") for f in manifest.files],
        "provenance": manifest.provenance.model_dump(mode="json"),
    }


def _render_summary(s: dict[str, Any]) -> str:
    q = s["quick_stats"]
    config = s["telemetry_config"]
    lines = [
        f"pack        {s['pack']}  ({s['pack_id']})",
        f"format      {s['format_version']}, commit {s['commit']}, created {s['created_at']}, "
        f"last commit {s['committed_at']}",
        f"profile     {config['profile_name']} (history {config['history_length']}, "
        f"gradients {_on(config['gradients']['enabled'])}, per-class {_on(config['per_class']['enabled'])}, "
        f"loss landscape {_on(config['loss_landscape']['enabled'])})",
        f"features    {s['features']['count']}: "
        + ", ".join(f"{g} {n}" for g, n in s["features"]["groups"].items()),
    ]
    if s["profiles"]:
        profiles = [f"{p} {v['features']}" + ("" if v["in_pack"] else " (not all in pack)")
                    for p, v in s["profiles"].items()]
        lines.append("profiles    " + ", ".join(profiles))
    lines.append(f"actions     {' '.join(s['actions'])}")
    for i, (name, sp) in enumerate(s["splits"].items()):
        lines.append(f"{'splits' if i == 0 else '':<12}{name:<6} {sp['fraction']:>5.0%}  "
                     f"{sp['episodes']:>8} episodes {sp['steps']:>10} steps {sp['files']:>4} files "
                     f"{_bytes(sp['bytes']):>10}")
    t = s["totals"]
    lines.append(f"{'total':<12}{'':<6} {'':>5}  {t['episodes']:>8} episodes {t['steps']:>10} steps "
                 f"{t['files']:>4} files {_bytes(t['bytes']):>10}")
    lines += _render_stats(q)
    p = s["provenance"]
    lines.append(f"provenance  esper {p.get('esper_version')}, torch {p.get('torch_version')}, "
                 f"pyarrow {p.get('pyarrow_version')}, host {p.get('hostname')}")
    if p.get("command_line"):
        lines.append(f"command     {' '.join(p['command_line'])}")
    return "\n".join(lines)


def _render_stats(q: dict[str, Any]) -> list[str]:
    lines = []
    total = sum(q["action_distribution"].values())
    if total:
        lines.append("actions     " + ", ".join(
            f"{a} {n} ({100 * n / total:.1f}%)" for a, n in sorted(q["action_distribution"].items(),
                                                                    key=lambda kv: -kv[1])))
    if q["accuracy_range"]:
        lo, hi = q["accuracy_range"]
        lines.append(f"accuracy    final accuracy {lo:.2f} .. {hi:.2f}")
    if q["seeds"]:
        lines.append(f"seeds       {q['seeds']} seeds, {q['seeds_fossilized']} fossilized "
                     f"(success rate {q['seed_success_rate']:.1%})")
    columns = q["columns"]
    nulls = [n for n, c in columns.items() if c["null_count"]]
    nonfinite = [f"{n} {c['nonfinite_count']}" for n, c in columns.items() if c["nonfinite_count"]]
    lines.append(f"columns     {len(columns)} numeric; {len(nulls)} with nulls; "
                 f"{len(nonfinite)} with NaN/Inf" + (f": {', '.join(nonfinite[:8])}" if nonfinite else ""))
    return lines


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---- query ---------------------------------------------------------------------------------------

def query_library() -> dict[str, str]:
    """The packaged SQL library (queries/): name -> SQL over the views steps, episodes, decisions."""
    from telemetry.queries import library

    return library()


def resolve_query(text: str) -> str:
    """SQL_OR_FILE: an existing file, else a query-library name, else the SQL itself."""
    queries = query_library()
    path = Path(text)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EsperError(f"{path}: cannot read the SQL file ({exc}); expected UTF-8 text") from None
    if text in queries:
        return queries[text]
    if text.endswith(".sql"):
        name = path.name[: -len(".sql")]
        if name in queries:
            return queries[name]
        raise EsperError(f"{text}: no such file, and no query {name!r} in the library ({', '.join(queries)})")
    return text


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from telemetry.packs.reader import open_pack
    from telemetry.packs.sandbox import check_read_only, read_only_connection

    sql = resolve_query(args.sql)
    con = read_only_connection(open_pack(args.pack, verify=args.verify))
    try:
        statements = con.extract_statements(sql)
        if not statements:
            raise EsperError("query: no SQL statement given")
        check_read_only(con, statements)
        for statement in statements:  # each runs once; the last one's result is printed
            con.execute(statement)
        if con.description is None:
            return 0
        columns, rows = [d[0] for d in con.description], con.fetchall()
    except duckdb.Error as exc:
        raise EsperError(f"query: {' '.join(str(exc).split())}") from None
    _print_rows(columns, rows, args.format)
    return 0


def _print_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    if fmt == "json":
        records = [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        print(json.dumps(records, indent=2, allow_nan=False, default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_csv_value(v) for v in row] for row in rows)
    else:
        print(_table(columns, rows))


def _json_value(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats become the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(_json_value(value), default=str)
    return value


def _cell(value: Any) -> str:
    text = "NULL" if value is None else json.dumps(_json_value(value), default=str) \
        if isinstance(value, list | dict) else str(value)
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 3] + "..."


def _table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows)
               for i in range(len(columns))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


# ---- validate ------------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from telemetry.packs.manifest import read_manifest
    from telemetry.packs.validate import leftovers, notes, validate_pack

    problems = validate_pack(args.pack)
    for problem in problems:
        print(problem)
    if problems:
        return EXIT_PROBLEMS
    manifest = read_manifest(args.pack)
    stats = manifest.quick_stats
    print(f"{args.pack}: sound ({len(manifest.files)} files, {stats.episodes} episodes, {stats.steps} steps)")
    unused = leftovers(Path(args.pack))
    if unused:
        print(f"note: left by an interrupted write, read by nothing, deleted by the next writer: "
              f"{', '.join(str(p) for p in unused)}")
    for note in notes(args.pack):
        print(f"note: {note}")
    return 0
