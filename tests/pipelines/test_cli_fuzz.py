"""Fuzzing the command line: argument vectors for every `esper` subcommand, drawn from the parsers' own
option lists, with hostile values (huge, negative, NaN, empty, unicode; paths that are files, folders,
dangling or looping links, packs with a broken `current`, foreign folders). Each example runs in a
fresh copy of a sandbox folder (packs, a policy, comparison reports, configs, odd paths), as its
working directory, and keeps the invariant of tests/support/fuzzing.py: exit 0 or 2, at most 3
lines on stderr, no traceback; nothing outside the named output (`--out`) changes; a pack named as
the output that read before still reads, its episodes the same.

Commands that run episodes or train get tiny settings (the anchors below) and draw only refused or
small values for the options that set how much work they do. Subcommands registered later are
fuzzed too (as cheap ones, unless listed in HEAVY). Sizes: tests/support/fuzzing.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import (
    changed,
    check_outcome,
    fuzz_settings,
    hostile_float,
    hostile_int,
    hostile_text,
    long_run,
    nested,
    run_esper,
    tree,
)
from support.packs import assert_bit_equal, make_episodes, write_pack

from pipelines.cli import main, registrars
from pipelines.environment.scenarios import SCENARIOS
from telemetry.cli import build_parser, path_argument
from telemetry.errors import EsperError
from telemetry.packs.reader import open_pack

# ---- the commands, as the parsers declare them ----------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every leaf subcommand ('profiles show', 'generate', ...) and its parser."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(words)] = parser
        for action in subs:
            for name, child in action.choices.items():
                walk(child, (*words, name))

    walk(build_parser(registrars()), ())
    return found


COMMANDS = _commands()
HEAVY = {"generate", "train", "compare", "control-check"}

# Tiny settings that make a valid draw cheap; a drawn option given after its anchor overrides it.
ANCHORS: dict[str, list[str]] = {
    "generate": ["--episodes", "1", "--epochs", "2", "--dataset", "synthetic", "--counterfactual-epochs", "1",
                 "--hindsight-epochs", "1", "--quiet"],
    "train": ["--features", "minimal", "--target", "heuristic", "--max-epochs", "2", "--patience", "1",
              "--hidden", "8", "--layers", "1"],
    "compare": ["--replicates", "2", "--eval-per-cause", "1", "--episodes", "1", "--epochs", "2", "--max-epochs", "2",
                "--patience", "1", "--hidden", "8", "--quiet"],
    "control-check": ["--episodes", "1", "--epochs", "2", "--dataset", "synthetic", "--strategies", "never",
                      "--scenarios", "healthy", "--workers", "1"],
}
# Positional arguments that work; half the examples draw hostile ones instead.
POSITIONAL = {"train": ["pack"], "profiles show": ["standard"], "inspect": ["pack"],
              "query": ["pack", "SELECT count(*) FROM steps"], "validate": ["pack"]}
# How much work a command does: only refused or small values are drawn, in the long run too (a huge valid
# one is a request to do that much work, which would exhaust the machine, not a finding).
WORK = {"episodes", "epochs", "workers", "counterfactual_epochs", "hindsight_epochs", "max_epochs", "patience",
        "seeds", "replicates", "eval_per_cause", "hidden", "layers", "germinate_at", "train_epochs", "batch_size"}
REFUSED_HUGE = {"hidden": ["100000000", "99999999999999999999"], "layers": ["65", "100000"]}

PATHS = ["pack", "earlier-layout", "generated", "no-current", "current-loop", "damaged", "empty-pack", "policy",
         "reports/broken", "file.txt", "empty-dir", "full-dir", "dangling", "loop", "link-to-pack",
         "readonly-dir", "dönnées", "x" * 300, "file.txt/below", "missing/deeper", "", " ", ".", "a\nb", "\udcff",
         "config.yaml", "deep.yaml", "bomb.yaml", "dup.yaml", "query.sql", "bad.sql"]
SQL = ["SELECT count(*) FROM steps", "SELECT * FROM episodes", "action_distribution", "query.sql", "bad.sql",
       "nope.sql", "", ";", "SELECT 1; SELECT 2", "COPY (SELECT 1) TO 'pack/steps/x.parquet'", "ATTACH 'x.db'",
       "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM glob('*')", "DESCRIBE steps",
       "SELECT 'a\nb' AS x", "SELECT '\udcff'"]
OVERRIDES = ["history_length=30", "gradients.enabled=true", "gradients.percentiles=[1,50,99]",
             "history_length=" + nested(70), "history_length=" + nested(5000), "profile_name=minimal", "=", "a..b=1",
             "history_length=1e999", "gradients.layers=&a [*a]", "per_class={enabled: true, enabled: false}",
             "gradients.sample_size=-1", "ünïcode=1", "history_length=" + "9" * 5000]
TEXT = {"profile": ("minimal", "standard", "diagnostic", "research"), "baseline": ("minimal", "standard"),
        "candidate": ("diagnostic", "research"), "features": ("minimal", "all", "base,gradients", "val_loss"),
        "scenarios": (",".join(SCENARIOS), "healthy", "lr_too_low,healthy", ","),
        "strategies": ("never", "heuristic,schedule", "conv"), "device": ("cpu", "cuda", "cuda:7", "gpu"),
        "policy": ("heuristic", "never", "policy")}
OUTPUTS = ["new-out", "nested/new/out", "pack", "generated", "file.txt", "empty-dir", "full-dir", "dangling",
           "link-to-pack", "", "file.txt/below", "reports/a", "no-current"]


def _value(command: str, action: argparse.Action) -> st.SearchStrategy[str]:
    dest = action.dest
    if dest == "out":
        return st.sampled_from(OUTPUTS)
    if dest == "overrides":
        return st.sampled_from(OVERRIDES)
    if dest == "sql":
        return hostile_text(*SQL)
    if action.type is int:
        extra = st.sampled_from(REFUSED_HUGE.get(dest, ["-5"]))
        return st.one_of(hostile_int(work=dest in WORK), extra)
    if action.type is float:
        return hostile_float()
    if action.choices:
        return st.one_of(st.sampled_from(list(action.choices)), hostile_text())
    if dest in TEXT:
        return st.one_of(hostile_text(*TEXT[dest]), st.sampled_from(PATHS))
    if action.type is path_argument or dest in ("pack", "reports", "config", "data_dir"):
        return st.sampled_from(PATHS)
    return st.one_of(hostile_text(), st.sampled_from(PATHS))


@st.composite
def argv_for(draw: st.DrawFn, command: str) -> list[str]:
    """The command's words, its positionals, its anchors (one sometimes left out), then up to three
    options drawn from its parser with values of their kind."""
    parser = COMMANDS[command]
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    options = [a for a in actions if a.option_strings]
    positionals = list(POSITIONAL.get(command, []))
    if not positionals or draw(st.booleans()):
        positionals = []
        for action in (a for a in actions if not a.option_strings):
            count = draw(st.integers(1, 3)) if action.nargs in ("+", "*") else 1
            positionals += [draw(_value(command, action)) for _ in range(count)]
    anchors = list(ANCHORS.get(command, []))
    if anchors and draw(st.integers(0, 9)) == 0:  # an option and its value, if it has one
        at = draw(st.sampled_from([i for i, word in enumerate(anchors) if word.startswith("--")]))
        flag = at + 1 == len(anchors) or anchors[at + 1].startswith("--")
        del anchors[at:at + (1 if flag else 2)]
    if any(a.dest == "out" for a in options):
        anchors += ["--out", draw(st.sampled_from(OUTPUTS[:2]))]
    drawn: list[str] = []
    for action in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        drawn.append(draw(st.sampled_from(action.option_strings)))
        if not isinstance(action, argparse._StoreTrueAction):
            drawn.append(draw(_value(command, action)))
    return [*command.split(), *positionals, *anchors, *drawn]


# ---- the sandbox -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs of every kind, built once; each example runs in a fresh copy (links kept)."""
    root = tmp_path_factory.mktemp("cli-fuzz") / "sandbox"
    root.mkdir()
    episodes = [(e, [{**row, "action_mask": None} for row in steps])  # every action valid: the pack trains
                for e, steps in make_episodes(0, 30, steps=3, profile="minimal")]
    write_pack(root / "pack", episodes, commit_every=10, profile="minimal")
    shutil.copytree(root / "pack", root / "earlier-layout")  # links followed: the earlier layout
    for name in ("no-current", "current-loop", "damaged"):
        shutil.copytree(root / "pack", root / name, symlinks=True)
    (root / "no-current" / "current").unlink()
    (root / "current-loop" / "current").unlink()
    os.symlink("current", root / "current-loop" / "current")
    victim = next((root / "damaged" / "steps").rglob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-100])
    write_pack(root / "empty-pack", [], profile="minimal")
    quiet = run_esper(main, ["generate", "--profile", "diagnostic", "--dataset", "synthetic", "--epochs", "2",
                             "--episodes", "1", "--counterfactual-epochs", "1", "--out", "generated", "--quiet"], root)
    assert quiet.code == 0, quiet
    trained = run_esper(main, ["train", "pack", "--features", "minimal", "--target", "heuristic", "--max-epochs", "1",
                               "--hidden", "4", "--layers", "1", "--out", "policy"], root)
    assert trained.code == 0, trained
    (root / "reports" / "broken").mkdir(parents=True)
    (root / "reports" / "broken" / ".esper-compare").write_text("esper-compare\n")
    (root / "file.txt").write_text("precious\n")
    (root / "empty-dir").mkdir()
    (root / "full-dir").mkdir()
    (root / "full-dir" / "notes.txt").write_text("precious\n")
    os.symlink("nowhere", root / "dangling")
    os.symlink("loop", root / "loop")
    os.symlink("pack", root / "link-to-pack")
    (root / "readonly-dir").mkdir(mode=0o555)
    (root / "dönnées").mkdir()
    (root / "config.yaml").write_text("history_length: 30\n")
    (root / "deep.yaml").write_text("history_length: " + nested(5000) + "\n")
    (root / "bomb.yaml").write_text("".join(f"{k}: &{k} [" + ",".join([f"*{p}" if p else "x"] * 10) + "]\n"
                                            for k, p in zip("abcdef", ["", *"abcde"], strict=True)))
    (root / "dup.yaml").write_text("history_length: 10\nhistory_length: 20\n")
    (root / "query.sql").write_text("SELECT action, count(*) FROM steps GROUP BY action ORDER BY action;\n")
    (root / "bad.sql").write_bytes(b"SELECT \xff")
    return root


def _outputs(argv: list[str], cwd: Path) -> list[Path]:
    """The named outputs, each with the folders a command creates to hold it (the first missing one).
    `esper repair PACK` writes into the pack it is given (its links and card), nothing else."""
    outputs = [cwd / word for word in argv[1:] if not word.startswith("-")][:1] if argv[0] == "repair" else []
    for i, word in enumerate(argv[:-1]):
        if word == "--out":
            path = cwd / argv[i + 1]
            while path.parent != cwd and not os.path.lexists(path.parent):
                path = path.parent
            outputs.append(path)
    return outputs


def _episodes(path: Path) -> tuple[pa.Table, pa.Table] | None:
    """A pack's rows in a canonical order, or None if it does not read."""
    try:
        pack = open_pack(path)
        steps, episodes = pack.steps(), pack.episodes()
    except (EsperError, OSError):
        return None
    return steps.sort_by([("episode_id", "ascending"), ("step", "ascending")]), episodes.sort_by("episode_id")


def _still_reads_the_same(before: tuple[pa.Table, pa.Table], path: Path) -> None:
    """Every row the pack held before is there, bit for bit (a resume may add episodes, nothing else)."""
    after = _episodes(path)
    assert after is not None, f"{path}: read before the command, not after"
    for old, new in zip(before, after, strict=True):
        kept = new.filter(pc.is_in(new.column("episode_id"), value_set=old.column("episode_id").unique()))
        assert_bit_equal(kept, old)


def _check_example(sandbox: Path, argv: list[str]) -> None:
    work = Path(tempfile.mkdtemp(dir=sandbox.parent))
    try:
        cwd = Path(shutil.copytree(sandbox, work / "sandbox", symlinks=True))
        outputs = _outputs(argv, cwd)
        packs_before = {p: _episodes(p) for p in outputs}
        before = tree(cwd, skip=outputs)
        outcome = run_esper(main, argv, cwd, seconds=600 if long_run() else 180)
        check_outcome(outcome, validate=argv[0] == "validate")
        assert changed(before, tree(cwd, skip=outputs)) == [], f"wrote outside its output: {outcome}"
        for path, rows in packs_before.items():
            if rows is not None:
                _still_reads_the_same(rows, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


CHEAP = sorted(c for c in COMMANDS if c not in HEAVY)


@pytest.mark.parametrize("command", CHEAP)
@fuzz_settings(15)
@given(data=st.data())
def test_any_arguments_to_a_quick_command_keep_the_invariant(sandbox: Path, command: str,
                                                           data: st.DataObject) -> None:
    _check_example(sandbox, data.draw(argv_for(command), label="argv"))


@pytest.mark.parametrize("command", sorted(HEAVY))
@fuzz_settings(6)
@given(data=st.data())
def test_any_arguments_to_a_command_that_runs_episodes_or_trains_keep_the_invariant(
        sandbox: Path, command: str, data: st.DataObject) -> None:
    _check_example(sandbox, data.draw(argv_for(command), label="argv"))


def test_every_subcommand_is_fuzzed() -> None:
    """The parsers are the source: a subcommand registered later is drawn for without a change here."""
    assert {"generate", "train", "compare", "control-check", "inspect", "query", "validate",
            "profiles list", "profiles show"} <= set(COMMANDS)
    assert set(CHEAP) | HEAVY == set(COMMANDS)
