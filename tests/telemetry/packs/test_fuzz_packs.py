"""Fuzzing packs: a real pack's manifest mutated (any field dropped, retyped, nested, enlarged; paths made
absolute, '..' or links) and its files damaged (truncated, flipped, swapped for a file of another pack
or profile), then read by every pack command and reader. Each example keeps the invariant of
tests/support/fuzzing.py, and more: a command that answers gives the pristine pack's answer, and
`esper validate` never calls damaged bytes sound.

Sizes: see tests/support/fuzzing.py (`--hypothesis-profile=long` for the long run).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import changed, check_outcome, fuzz_settings, json_values, nested, run_esper, tree
from support.packs import FAULT_PROFILE, FAULT_SPLITS, assert_bit_equal, make_episodes, write_pack

from telemetry.cli import main
from telemetry.errors import EsperError
from telemetry.packs.manifest import MANIFEST_NAME, read_manifest
from telemetry.packs.reader import open_pack

COUNTS = "SELECT count(*) AS n, sum(step) AS s, count(val_loss) AS v FROM steps"
EPISODE_COUNT = "SELECT count(*) AS n, count(final_accuracy) AS a FROM episodes"


@pytest.fixture(scope="module")
def world(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pristine pack, packs to take foreign files from, and the answers every reader must give."""
    root = tmp_path_factory.mktemp("fuzz-packs")
    write_pack(root / "same-profile", make_episodes(0, 6, steps=4, seed=9, profile=FAULT_PROFILE), commit_every=2,
               profile=FAULT_PROFILE, splits=FAULT_SPLITS)
    write_pack(root / "other-profile", make_episodes(0, 6, steps=4, profile="standard"), commit_every=2,
               profile="standard", splits=FAULT_SPLITS)
    answers = {sql: run_esper(main, ["query", str(pristine), sql, "--format", "csv"], root).out
               for sql in (COUNTS, EPISODE_COUNT)}
    pack = open_pack(pristine)
    return {"root": root, "pristine": pristine, "answers": answers,
            "steps": _sorted(pack.steps()), "episodes": _sorted(pack.episodes())}


def _sorted(table: pa.Table) -> pa.Table:
    keys = [("episode_id", "ascending")] + ([("step", "ascending")] if "step" in table.column_names else [])
    return table.sort_by(keys)


def _fresh(world: dict[str, Any], linked: bool) -> tuple[Path, Path]:
    """A new example folder holding a copy of the pristine pack: the links kept (cp -a), or followed."""
    work = Path(tempfile.mkdtemp(dir=world["root"]))
    return work, Path(shutil.copytree(world["pristine"], work / "pack", symlinks=linked))


# ---- mutating the manifest -------------------------------------------------------------------------

def _paths(value: Any, at: tuple = ()) -> Iterator[tuple]:
    yield at
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*at, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*at, i))


def _replace(document: Any, at: tuple, change) -> Any:
    if not at:
        return change(document)
    parent = document
    for key in at[:-1]:
        parent = parent[key]
    result = change(parent[at[-1]])
    if result is _DROP:
        del parent[at[-1]]
    else:
        parent[at[-1]] = result
    return document


_DROP = object()


def _file_path_attack(draw: st.DrawFn, pack: Path, work: Path, entry: dict[str, Any]) -> str:
    """A path a hand edit could give a listed file, with whatever it points at planted first."""
    real = pack / entry["path"]
    outside = work / "outside.parquet"
    if real.is_file() and not outside.exists():
        shutil.copy(real, outside)
    link = f"{entry['table']}/split={entry['split']}/planted.parquet"
    kind = draw(st.sampled_from(["absolute", "dotdot", "inner-dotdot", "link-out", "link-in", "link-etc",
                                 "directory", "manifest", "double-slash", "trailing-slash", "backslash", "unicode"]))
    if kind.startswith("link"):
        (pack / link).unlink(missing_ok=True)
        target = {"link-out": outside, "link-in": real, "link-etc": Path("/etc/passwd")}[kind]
        os.symlink(target, pack / link)
        return link
    return {"absolute": str(real), "dotdot": "../outside.parquet",
            "inner-dotdot": f"{entry['table']}/../{entry['path']}", "directory": f"{entry['table']}/split=train",
            "manifest": MANIFEST_NAME, "double-slash": entry["path"].replace("/", "//", 1),
            "trailing-slash": entry["path"] + "/", "backslash": entry["path"].replace("/", "\\"),
            "unicode": entry["path"].replace("part-", "pärt-")}[kind]


@st.composite
def manifest_mutation(draw: st.DrawFn, pack: Path, work: Path) -> str:
    path = pack / MANIFEST_NAME
    document = json.loads(path.read_text())
    op = draw(st.sampled_from(["drop", "retype", "nest", "enlarge", "path", "deep", "duplicate-entry"]))
    if op == "path":
        i = draw(st.integers(0, len(document["files"]) - 1))
        document["files"][i]["path"] = _file_path_attack(draw, pack, work, document["files"][i])
    elif op == "duplicate-entry":
        document["files"].append(dict(draw(st.sampled_from(document["files"]))))
    elif op == "deep":
        at = draw(st.sampled_from([p for p in _paths(document) if p]))
        levels = draw(st.sampled_from([63, 65, 200, 5000, 100_000]))
        _replace(document, at, lambda v: json.loads(nested(levels)) if levels < 500 else _Raw(nested(levels)))
    else:
        at = draw(st.sampled_from([p for p in _paths(document) if p]))
        change = {"drop": lambda v: _DROP,
                  "retype": lambda v: draw(json_values()),
                  "nest": lambda v: draw(st.sampled_from([[v], {"value": v}, [[v]]])),
                  "enlarge": lambda v: draw(st.sampled_from([v * 1000 if isinstance(v, str | list) else v,
                                                             10 ** 30, -(10 ** 30), 1e308, "x" * 100_000,
                                                             list(range(10_000)), _Raw("9" * 5000)]))}[op]
        _replace(document, at, change)
    path.unlink()  # a hand edit replaces the file (through the link, in the version folder)
    path.write_text(_dumps(document))
    return op


class _Raw:
    """JSON text spliced in as is (deeper than json.dumps itself can write)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _dumps(document: Any) -> str:
    raws: list[str] = []

    def default(value: Any) -> str:
        raws.append(value.text)
        return f"@@RAW{len(raws) - 1}@@"

    text = json.dumps(document, default=default)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw)
    return text


# ---- damaging files --------------------------------------------------------------------------------

@st.composite
def file_damage(draw: st.DrawFn, pack: Path, work: Path, world: dict[str, Any]) -> str:
    manifest = json.loads((pack / MANIFEST_NAME).read_text())
    op = draw(st.sampled_from(["truncate", "flip", "append", "empty", "directory", "link-out", "swap-same-profile",
                               "swap-other-profile", "swap-other-profile-entry-fixed", "swap-within"]))
    # a steps file of another profile, its entry made to match: only its columns tell (an episodes file of
    # another profile with a matching entry is a consistent hand-made pack, which only validate questions)
    entry = draw(st.sampled_from([f for f in manifest["files"]
                                  if f["table"] == "steps" or not op.endswith("entry-fixed")]))
    path = pack / entry["path"]
    data = path.read_bytes()
    path.unlink()
    if op == "truncate":
        path.write_bytes(data[:draw(st.integers(0, len(data) - 1))])
    elif op == "flip":
        at = draw(st.integers(0, len(data) - 1))
        path.write_bytes(data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:])
    elif op == "append":
        path.write_bytes(data + draw(st.binary(min_size=1, max_size=64)))
    elif op == "empty":
        path.write_bytes(b"")
    elif op == "directory":
        path.mkdir()
    elif op == "link-out":
        (work / "outside.parquet").write_bytes(data)
        os.symlink(work / "outside.parquet", path)
    elif op == "swap-within":
        other = draw(st.sampled_from([f for f in manifest["files"] if f["path"] != entry["path"]]))
        path.write_bytes((pack / other["path"]).read_bytes())
    else:
        source = world["root"] / ("same-profile" if op == "swap-same-profile" else "other-profile")
        twin = next(f for f in read_manifest(source).files if (f.table, f.split) == (entry["table"], entry["split"]))
        path.write_bytes((source / twin.path).read_bytes())
        if op.endswith("entry-fixed"):  # the attack a checksum cannot see: only the file's columns tell
            entry.update(bytes=twin.bytes, sha256=twin.sha256, rows=twin.rows)
            (pack / MANIFEST_NAME).unlink()
            (pack / MANIFEST_NAME).write_text(json.dumps(manifest))
    return op


# ---- the invariant ---------------------------------------------------------------------------------

def _read_everything(world: dict[str, Any], pack: Path, work: Path, damaged: bool) -> None:
    """Every pack command and reader: one line or the pristine answer, and nothing written anywhere."""
    before = tree(work)
    for argv in (["inspect", str(pack)], ["inspect", str(pack), "--json"],
                 *(["query", str(pack), sql, "--format", "csv"] for sql in world["answers"])):
        outcome = run_esper(main, argv, work)
        check_outcome(outcome)
        if outcome.code == 0 and argv[0] == "query":
            assert outcome.out == world["answers"][argv[2]], f"a wrong answer in silence: {outcome}"
    outcome = run_esper(main, ["validate", str(pack)], work)
    check_outcome(outcome, validate=True)
    if damaged:
        assert outcome.code != 0, f"validate called a damaged pack sound: {outcome}"
    for table in ("steps", "episodes"):
        try:
            read = getattr(open_pack(pack), table)()
        except EsperError:
            continue
        assert_bit_equal(_sorted(read), world[table])  # else open_pack(...).<table>() read other data in silence
    try:
        open_pack(pack, verify=False).tensors(normalize=True)
    except EsperError:
        pass
    assert changed(before, tree(work)) == [], "a read-only command changed files"


@fuzz_settings(40)
@given(data=st.data(), linked=st.booleans())
def test_a_mutated_manifest_is_refused_in_one_line_or_read_exactly(world: dict[str, Any], data: st.DataObject,
                                                                    linked: bool) -> None:
    work, pack = _fresh(world, linked)
    try:
        data.draw(manifest_mutation(pack, work), label="mutation")
        _read_everything(world, pack, work, damaged=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@fuzz_settings(30)
@given(data=st.data(), linked=st.booleans())
def test_a_damaged_file_is_refused_in_one_line_never_read_as_good(world: dict[str, Any], data: st.DataObject,
                                                                 linked: bool) -> None:
    work, pack = _fresh(world, linked)
    try:
        data.draw(file_damage(pack, work, world), label="damage")
        _read_everything(world, pack, work, damaged=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
