"""Checking that a pack's files and its manifest agree, for `esper validate`.

Readers trust the manifest; this is the one place that checks everything it claims: each listed
file is present, inside the pack (no link leads out), of the recorded size and checksum, readable,
with the recorded row count and the canonical schema; no unlisted data file sits where plain tools
would read it (the table folders, which lead to the current version folder); the links of the
layout lead to the current commit; row counts add up to the quick stats; and splits are by episode
(each episode in the split its id hashes to, its steps beside it). Each problem is one line naming
the file or value at fault. Version folders an interrupted write left are no problem (no reader
sees them; the next writer deletes them): `leftovers` lists them for the CLI's summary. A copy
that lost the pack's links or followed them (repair.py) is named with its fix, `esper repair`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.packs.card import CARD_NAME, GUARD_NAME
from telemetry.packs.commit import inside, is_versioned, layout_problems
from telemetry.packs.commit import leftovers as leftovers
from telemetry.packs.manifest import TABLES, FileEntry, Manifest, file_sha256, read_manifest
from telemetry.packs.repair import copy_problems, lost_links
from telemetry.packs.splits import split_of
from telemetry.packs.tables import STEP_IDENTITY


def validate_pack(path: str | os.PathLike[str]) -> list[str]:
    """Every problem found, one line each; empty when the pack is sound.

    A path that is not a readable pack raises PackError instead (that is bad input, not damage).
    """
    root = Path(path)
    problems = copy_problems(root)
    if lost_links(root) is not None:
        return problems  # nothing leads to a manifest: the rest cannot be checked until repaired
    manifest = read_manifest(root)
    problems += layout_problems(root, manifest) + _schema_problems(manifest)
    good: list[FileEntry] = []
    for entry in manifest.files:
        found = _file_problems(root, manifest, entry)
        problems += found
        if not found:
            good.append(entry)
    problems += _unlisted_files(root, manifest)
    problems += _count_problems(manifest)
    if len(good) == len(manifest.files):
        problems += _split_problems(root, manifest)
    return problems


def notes(path: str | os.PathLike[str]) -> list[str]:
    """What a sound pack lacks that newer writers add (no reader needs it), one line each."""
    root = Path(path)
    if not is_versioned(root):
        return []
    missing = [name for name in (CARD_NAME, GUARD_NAME) if not (root / name).exists()]
    if not missing:
        return []
    return [f"{root}: no {' or '.join(missing)} (written before packs had a dataset card and a glob guard); "
            f"`esper repair {root}` or the next writer adds them"]


def _schema_problems(manifest: Manifest) -> list[str]:
    names = manifest.arrow_schema("steps").names
    features = manifest.feature_schema.index
    offset = len(STEP_IDENTITY)
    if names[offset:offset + len(features)] != list(features):
        return ["manifest.json: the steps schema's feature columns differ from feature_schema"]
    return []


def _file_problems(root: Path, manifest: Manifest, entry: FileEntry) -> list[str]:
    path = root / entry.path
    parts = Path(entry.path).parts
    if len(parts) != 3 or parts[0] != entry.table or parts[1] != f"split={entry.split}":
        return [f"{path}: listed as table {entry.table!r}, split {entry.split!r} but lies elsewhere"]
    if not path.is_file():
        return [f"{path}: listed in manifest.json but missing"]
    if not inside(root, path):
        return [f"{path}: leads outside the pack (through a symbolic link)"]
    try:
        size = path.stat().st_size
        if size != entry.bytes:
            return [f"{path}: {size} bytes but manifest.json says {entry.bytes}"]
        if file_sha256(path) != entry.sha256:
            return [f"{path}: sha256 does not match manifest.json"]
    except OSError as exc:
        return [f"{path}: cannot read ({exc.strerror or exc})"]
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        return [f"{path}: not readable as Parquet ({str(exc).splitlines()[0]})"]
    problems = []
    if meta.num_rows != entry.rows:
        problems.append(f"{path}: {meta.num_rows} rows but manifest.json says {entry.rows}")
    if not schema.remove_metadata().equals(manifest.arrow_schema(entry.table).remove_metadata()):
        problems.append(f"{path}: schema differs from the pack's canonical {entry.table} schema")
    return problems


def _unlisted_files(root: Path, manifest: Manifest) -> list[str]:
    listed = {f.path for f in manifest.files}
    problems = []
    for table in TABLES:
        for path in sorted((root / table).rglob("*.parquet")):
            if path.relative_to(root).as_posix() not in listed:
                problems.append(f"{path}: not listed in manifest.json (left by an interrupted write; "
                                "project readers skip it but plain Parquet readers would not)")
    return problems


def _count_problems(manifest: Manifest) -> list[str]:
    problems = []
    rows: Counter[tuple[str, str]] = Counter()
    for f in manifest.files:
        rows[(f.table, f.split)] += f.rows
    for split, stats in manifest.split_stats.items():
        if rows[("steps", split)] != stats.steps:
            problems.append(f"manifest.json: split {split!r} files hold {rows[('steps', split)]} steps "
                            f"but its quick stats count {stats.steps}")
        if rows[("episodes", split)] != stats.episodes:
            problems.append(f"manifest.json: split {split!r} files hold {rows[('episodes', split)]} episodes "
                            f"but its quick stats count {stats.episodes}")
    total = manifest.quick_stats
    if (total.steps, total.episodes) != (sum(s.steps for s in manifest.split_stats.values()),
                                         sum(s.episodes for s in manifest.split_stats.values())):
        problems.append("manifest.json: quick_stats counts differ from the sum of split_stats")
    return problems


def _split_problems(root: Path, manifest: Manifest) -> list[str]:
    """Splits are by episode: ids unique, each in its hashed split, its steps in the same split."""
    episode_split: dict[str, str] = {}
    problems = []
    for entry in manifest.files_of("episodes"):
        for episode_id in pq.read_table(root / entry.path, columns=["episode_id"]).column(0).to_pylist():
            if episode_id in episode_split:
                problems.append(f"{root / entry.path}: episode {episode_id!r} appears more than once")
            elif split_of(episode_id, manifest.splits) != entry.split:
                problems.append(f"{root / entry.path}: episode {episode_id!r} hashes to split "
                                f"{split_of(episode_id, manifest.splits)!r}, not {entry.split!r}")
            episode_split[episode_id] = entry.split
    for entry in manifest.files_of("steps"):
        ids = pq.read_table(root / entry.path, columns=["episode_id"]).column(0).unique().to_pylist()
        for episode_id in ids:
            if episode_split.get(episode_id) != entry.split:
                where = episode_split.get(episode_id)
                state = "has no episode row" if where is None else f"belongs to split {where!r}"
                problems.append(f"{root / entry.path}: steps of episode {episode_id!r}, which {state}")
                break
    return problems
