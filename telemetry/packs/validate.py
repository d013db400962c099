"""Checking that a pack's files and its manifest agree, for `esper validate`.

Readers trust the manifest; this is the one place that checks everything it claims: each listed
file is present, inside the pack (no link leads out), of the recorded size and checksum, readable,
with the recorded row count and the canonical schema; no unlisted data file sits where plain tools
would read it (the table folders, which lead to the current version folder); the links of the
layout lead to the current commit; row counts add up to the quick stats; and splits are by episode
(each episode in the split its id hashes to, its steps beside it); the quick stats (which
`tensors(normalize=...)` and `esper train` standardise with) are what the files give, recomputed,
so a hand edit cannot pass. Each problem is one line naming
the file or value at fault. Version folders an interrupted write left are no problem (no reader
sees them; the next writer deletes them): `leftovers` lists them for the CLI's summary. A copy
that lost the pack's links or followed them (repair.py) is named with its fix, `esper repair`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry.packs.card import CARD_NAME, GUARD_NAME
from telemetry.packs.commit import inside, is_versioned, layout_problems
from telemetry.packs.commit import leftovers as leftovers
from telemetry.packs.file_schema import schema_difference
from telemetry.packs.manifest import TABLES, FileEntry, Manifest, file_sha256, read_manifest
from telemetry.packs.quick_stats import ColumnStats, QuickStats, merge_all, numeric_columns
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
        problems += _vocabulary_problems(root, manifest)
        problems += _stats_problems(root, manifest)
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
    except (OSError, pa.ArrowException, ValueError) as exc:  # a damaged footer can fail to decode
        return [f"{path}: not readable as Parquet ({str(exc).splitlines()[0]})"]
    problems = []
    if meta.num_rows != entry.rows:
        problems.append(f"{path}: {meta.num_rows} rows but manifest.json says {entry.rows}")
    canonical = manifest.arrow_schema(entry.table)
    if not schema.remove_metadata().equals(canonical.remove_metadata()):
        difference = schema_difference(schema, canonical) or "column order or nullability differs"
        problems.append(f"{path}: schema differs from the pack's canonical {entry.table} schema ({difference})")
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


def _vocabulary_problems(root: Path, manifest: Manifest) -> list[str]:
    """Actions and masks in the vocabulary of manifest.json's `actions`, which gives labels their index
    and mask entries their meaning: an action outside it would become 'no label' in silence."""
    actions, problems = set(manifest.actions), []
    for entry in manifest.files_of("steps"):
        present = set(pq.read_schema(root / entry.path).names)
        labels = [c for c in ("action", "best_action", "expert_action") if c in present]
        table = pq.read_table(root / entry.path, columns=[*labels, "action_mask"])
        for column in labels:
            unknown = sorted(set(table.column(column).drop_null().unique().to_pylist()) - actions)
            if unknown:
                problems.append(f"{root / entry.path}: {column} {unknown[0]!r} is not one of manifest.json's actions")
        widths = set(pc.list_value_length(table.column("action_mask")).drop_null().unique().to_pylist())
        if widths - {len(actions)}:
            problems.append(f"{root / entry.path}: action_mask has {sorted(widths)} entries per step, manifest.json "
                            f"lists {len(actions)} actions")
    return problems


# ---- quick stats, recomputed -------------------------------------------------------------------------

_REL = 1e-6  # mean and std of one chunk merged with another differ from one pass in the last bits


def _stats_problems(root: Path, manifest: Manifest) -> list[str]:
    """Each split's quick stats against the same stats computed from its files; the pack's against
    the merge of its splits'."""
    columns = numeric_columns(manifest.arrow_schema("steps"))
    problems = []
    for split, recorded in manifest.split_stats.items():
        found = merge_all([QuickStats.of_steps(pq.read_table(root / e.path), columns)
                           for e in manifest.files_of("steps", [split])]
                          + [QuickStats.of_episodes(pq.read_table(root / e.path))
                             for e in manifest.files_of("episodes", [split])])
        difference = _stats_difference(recorded, found, "the files give")
        if difference:
            problems.append(f"manifest.json: split_stats.{split}: {difference} (edited by hand?)")
    difference = _stats_difference(manifest.quick_stats, merge_all(manifest.split_stats.values()),
                                   "the split_stats merged give")
    if difference:
        problems.append(f"manifest.json: quick_stats: {difference} (edited by hand?)")
    return problems


def _stats_difference(recorded: QuickStats, found: QuickStats, source: str) -> str | None:
    """The first statistic that differs, as 'X is A, but <source> B'; None when all agree."""
    for name in ("episodes", "steps", "action_distribution", "final_accuracy_min", "final_accuracy_max", "seeds",
                 "seeds_fossilized"):
        a, b = getattr(recorded, name), getattr(found, name)
        if not _close(a, b):
            return f"{name} is {a!r}, but {source} {b!r}"
    if set(recorded.columns) != set(found.columns):
        odd = sorted(set(recorded.columns) ^ set(found.columns))
        return f"the columns with stats differ from the steps schema's numeric columns (e.g. {odd[0]!r})"
    for column, stats in recorded.columns.items():
        for field in ("count", "null_count", "nonfinite_count", "min", "max", "mean", "std"):
            a, b = getattr(stats, field), getattr(found.columns.get(column, ColumnStats()), field)
            if not _close(a, b):
                return f"{column} {field} is {a!r}, but {source} {b!r}"
    return None


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= _REL * max(abs(a), abs(b), 1e-12) or a == b
    return a == b
