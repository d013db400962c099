"""The dataset card: PACK/README.md, what a person or a dataset loader reads before the data.

Its YAML header holds the `configs:` block that Hugging Face `datasets` reads, so
`load_dataset("PACK", "steps")` returns exactly the pack's splits (train / validation / test, the
pack's `val` renamed to the name the loader expects) instead of one "train" split of every row,
locally and on a hub. Below it: a summary (profile, counts, how the pack was generated), the safe
ways to read it with plain tools, and every column with its type, unit, meaning and codes.

The card is rendered from the manifest alone and written into each commit's version folder beside
the manifest (commit.py), so it changes with the commit, atomically, and never describes files a
glob cannot see. Nothing is read from the data files.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

from telemetry.packs.columns import described_columns

if TYPE_CHECKING:
    from telemetry.packs.manifest import ColumnEntry, Manifest

CARD_NAME = "README.md"
# Hugging Face's canonical split names; a pack's other split names are kept as they are
HF_SPLIT_NAMES = {"val": "validation", "valid": "validation", "dev": "validation"}
# What a recursive glob over the whole pack reaches before any table file: not Parquet, on purpose,
# so that PACK/**/*.parquet fails naming this file instead of mixing the two tables (see commit.py).
GUARD_NAME = "NOT-A-TABLE--read-PACK-steps-or-PACK-episodes.parquet"
GUARD_TEXT = (
    "This file is not Parquet, on purpose.\n"
    "A pack holds two tables with different schemas, steps and episodes. Read one table at a time:\n"
    "  PACK/steps/**/*.parquet or PACK/episodes/**/*.parquet (hive partitioning: split=NAME),\n"
    "or load_dataset('PACK', 'steps') with Hugging Face datasets. A glob over the whole pack\n"
    "(PACK/**/*.parquet) would mix both tables and read the data more than once through the\n"
    "pack's links; this file makes such a glob fail instead. See PACK/README.md.\n"
)


def hf_split(name: str) -> str:
    return HF_SPLIT_NAMES.get(name, name)


def hf_configs(manifest: Manifest) -> list[dict[str, Any]]:
    """One config per table that has rows, one data_files entry per split that has files."""
    configs = []
    for table in ("steps", "episodes"):
        files = [{"split": hf_split(split), "path": f"{table}/split={split}/*.parquet"}
                 for split in manifest.splits if manifest.files_of(table, [split])]
        if files:
            configs.append({"config_name": table, "data_files": files})
    return configs


def render_card(manifest: Manifest) -> str:
    header: dict[str, Any] = {"pretty_name": manifest.pack_id, "tags": ["esper-telemetry", "training-telemetry"]}
    configs = hf_configs(manifest)
    if configs:
        header["configs"] = configs
    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True)
    return "\n".join(["---", front.rstrip(), "---", "", *_summary(manifest), *_reading(manifest),
                      *_columns(manifest)]) + "\n"


def _summary(m: Manifest) -> list[str]:
    stats, config = m.quick_stats, m.telemetry_config
    features = m.feature_schema.features
    lines = [f"# {m.pack_id}", "",
             f"An esper-telemetry pack: {stats.episodes} episodes and {stats.steps} decision steps (one row per "
             f"decision, one decision per training epoch), recorded with the `{config.profile_name}` telemetry "
             f"profile ({len(features)} features in {_count(len(m.feature_schema.groups), 'group')}). "
             f"Commit {m.commit}, {m.committed_at:%Y-%m-%d %H:%M} UTC; format {m.format_version}. "
             "`manifest.json` beside this card is the commit record (every file with its row count and "
             "sha256, quick stats, the config).", "",
             "| split (folder) | loader split | episodes | steps |", "|---|---|---:|---:|"]
    for split in m.splits:
        s = m.split_stats.get(split)
        lines.append(f"| `split={split}` | {hf_split(split)} | {s.episodes if s else 0} | {s.steps if s else 0} |")
    lines += ["", "Splits are assigned per episode from a stable hash of `episode_id`: no episode is in two splits.",
              "", "## How it was generated", ""]
    p = m.provenance
    extra = p.model_extra or {}
    facts = [("dataset", p.dataset), ("seeds", p.seeds), ("host model", p.host_model),
             ("generation settings", extra.get("generation")),
             ("command", " ".join(p.command_line) if p.command_line else None),
             ("software", f"esper-telemetry {p.esper_version}, torch {p.torch_version}, pyarrow {p.pyarrow_version}")]
    lines += [f"- {name}: `{_inline(value)}`" for name, value in facts if value]
    lines += [f"- telemetry: history of {config.history_length} epochs; feature groups "
              + ", ".join(f"{g} ({len(n)})" for g, n in m.feature_schema.groups.items()),
              "- action vocabulary (label indices and `action_mask` positions): "
              + ", ".join(f"{i} {a}" for i, a in enumerate(m.actions))]
    if stats.action_distribution:
        total = sum(stats.action_distribution.values())
        lines.append("- actions taken: " + ", ".join(f"{a} {n} ({n / total:.0%})"
                                                      for a, n in stats.action_distribution.items()))
    if stats.accuracy_range:
        lo, hi = stats.accuracy_range
        lines.append(f"- final validation accuracy: {lo:.1f}% .. {hi:.1f}%")
    return [*lines, ""]


def _inline(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text.replace("`", "'")


def _reading(m: Manifest) -> list[str]:
    return ["## Reading it", "",
            "Read one table at a time; `split` comes from the `split=NAME` folders (hive partitioning).",
            "A glob over the whole pack (`PACK/**/*.parquet`) is refused on purpose: it would mix both",
            f"tables, and it fails on `{GUARD_NAME}`.", "", "```python",
            'datasets.load_dataset("PACK", "steps")          # or "episodes"; splits as in the table above',
            "duckdb.sql(\"SELECT * FROM read_parquet('PACK/steps/**/*.parquet', hive_partitioning=true)\")",
            'polars.scan_parquet("PACK/steps/**/*.parquet", hive_partitioning=True)',
            'pyarrow.dataset.dataset("PACK/steps", format="parquet", partitioning="hive")',
            'pandas.read_parquet("PACK/steps")',
            "```", "",
            "Copy a pack with `cp -a` or `rsync -a`: it is made of links. `esper validate PACK` names a copy",
            "that lost or followed them, and `esper repair PACK` restores them. To upload the pack to a hub,",
            "upload the folder `PACK/current`: the last commit as plain files (this card, the manifest, both",
            "tables).", ""]


def _columns(m: Manifest) -> list[str]:
    columns = described_columns(m)
    lines = ["## Columns", ""]
    for table in ("steps", "episodes"):
        mine = [c for c in columns if c.table == table]
        lines += [f"### {table} ({len(mine)} columns)", "", "| column | type | unit | group | description |",
                  "|---|---|---|---|---|"]
        lines += [f"| `{c.name}` | {_cell(c.dtype)} | {_cell(c.unit)} | {c.group or ''} | {_cell(c.description)} |"
                  for c in mine]
        lines.append("")
    coded = [c for c in columns if c.codes]
    if coded:
        lines += ["### Codes", ""]
        for c in coded:
            lines += _codes(c)
    return lines


def _codes(c: ColumnEntry) -> list[str]:
    heading = "position" if c.name == "action_mask" else "value"
    rows = [f"| `{value}` | {_cell(meaning)} |" for value, meaning in (c.codes or {}).items()]
    return [f"`{c.table}.{c.name}`:", "", f"| {heading} | meaning |", "|---|---|", *rows, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
