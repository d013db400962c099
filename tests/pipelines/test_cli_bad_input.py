"""Bad input, table-driven, across every command: each case must exit 2 with exactly one stderr line
"esper: error: ..." naming what was wrong, no traceback, and leave every file it was given as it was
(a failed `generate` leaves no --out behind; a failed pack command leaves the pack byte-identical).

Each case runs in-process through `telemetry.cli.main` in its own tmp folder; the whole folder is
snapshotted before and after, so "nothing left behind" covers packs, configs and --out alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.packs import make_episodes, write_pack

from pipelines.cli import main
from pipelines.experiment.compare import CompareSpec

Setup = Callable[[Path], None]
GEN = ["generate", "--out", "{tmp}/out", "--dataset", "synthetic", "--epochs", "3", "--quiet"]
TRAIN = ["train", "{pack}", "--out", "{tmp}/model", "--target", "heuristic"]


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]  # "{tmp}" and the packs of the `packs` fixture ("{pack}", "{empty}", ...) are filled in
    needle: str  # a distinctive part of the one error line
    setup: Setup | None = None


# ---- setups --------------------------------------------------------------------------------------

def write(name: str, content: str | bytes) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def edit_manifest(change: Callable[[dict[str, Any]], Any]) -> Setup:
    """Rewrite the copied pack's manifest.json through `change` (which edits the dict in place)."""
    def setup(tmp: Path) -> None:
        path = tmp / "pack" / "manifest.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return setup


def first_steps_file(data: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in data["files"] if f["table"] == "steps")


def escape_to(target: str) -> Setup:
    """A manifest whose first steps file points outside the pack, at a copy of that very file: the
    size and sha256 match, so only a reader that refuses the path itself stops it."""
    def setup(tmp: Path) -> None:
        path = tmp / "pack" / "manifest.json"
        data = json.loads(path.read_text())
        entry = first_steps_file(data)
        outside = (tmp / "pack" / target.replace("{tmp}", str(tmp))).resolve()
        shutil.copy(tmp / "pack" / entry["path"], outside)
        entry["path"] = target.replace("{tmp}", str(tmp))
        path.write_text(json.dumps(data))
    return setup


def directory_in_place_of_data(tmp: Path) -> None:
    entry = first_steps_file(json.loads((tmp / "pack" / "manifest.json").read_text()))
    (tmp / "pack" / entry["path"]).unlink()
    (tmp / "pack" / entry["path"]).mkdir()


def both(*setups: Setup) -> Setup:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)
    return setup


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        data = data[p]
    data[last] = value


def manifest_value(path: str, value: Any) -> Setup:
    return edit_manifest(lambda d: _set(d, path, value))


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def link(name: str, target: str) -> Setup:
    def setup(tmp: Path) -> None:
        os.symlink(target.replace("{tmp}", str(tmp)), tmp / name)
    return setup


def swap_in_a_minimal_file(tmp: Path) -> None:
    """The diagnostic pack's first steps file replaced by a minimal pack's, its manifest entry updated
    to match (size, sha256, rows): only a check of the file's columns can tell."""
    diag, minimal = tmp / "diag", tmp / "minimal"
    write_pack(minimal, make_episodes(0, 3, steps=3, profile="minimal"), profile="minimal")
    data = json.loads((diag / "manifest.json").read_text())
    entry = first_steps_file(data)
    other = first_steps_file(json.loads((minimal / "manifest.json").read_text()))
    shutil.copy(minimal / other["path"], diag / entry["path"])
    assert (entry["split"], entry["rows"]) == (other["split"], other["rows"])  # the same episodes
    entry.update(bytes=other["bytes"], sha256=other["sha256"])
    (diag / "manifest.json").write_text(json.dumps(data))


def unlink(name: str) -> Setup:
    def setup(tmp: Path) -> None:
        (tmp / name).unlink()
    return setup


COMPARE = ["compare", "--replicates", "2", "--eval-per-cause", "1", "--epochs", "3"]
DEEP_POLICY = '{"format": "esper-policy/1", "meta": ' + deep(100) + "}"
BOMB = "".join(f"{k}: &{k} [" + ",".join([f"*{p}" if p else "x"] * 10) + "]\n"
               for k, p in zip("abcdef", ["", *"abcde"], strict=True))

# Issue 17 (tracebacks) and issue 18 (silent wrong answers, writes outside the output), one row each.
RELIABILITY_CASES: list[Case] = [
    Case("config-deep-yaml", ["profiles", "show", "standard", "--config", "{tmp}/c.yaml"],
         "c.yaml: YAML nested more than 64 levels deep", write("c.yaml", "history_length: " + deep(5000))),
    Case("set-deep-yaml", ["profiles", "show", "standard", "--set", "history_length=" + deep(5000)],
         "--set history_length: YAML nested more than 64 levels deep"),
    Case("config-alias-bomb", ["profiles", "show", "standard", "--config", "{tmp}/c.yaml"],
         "c.yaml: YAML expands to more than 100000 values", write("c.yaml", BOMB)),
    Case("config-too-large", ["profiles", "show", "standard", "--config", "{tmp}/c.yaml"],
         "c.yaml: 2097152 bytes, more than the 1 MiB", write("c.yaml", "#" * (2 << 20))),
    Case("config-duplicate-key", ["profiles", "show", "standard", "--config", "{tmp}/c.yaml"],
         "c.yaml:3:1: duplicate key 'history_length' (first given on line 1)",
         write("c.yaml", "history_length: 10\nper_class: {}\nhistory_length: 30\n")),
    Case("set-profile-name", ["profiles", "show", "diagnostic", "--set", "profile_name=minimal"],
         "--set: profile_name cannot be overridden"),
    Case("config-profile-name", ["profiles", "show", "diagnostic", "--config", "{tmp}/c.yaml"],
         "c.yaml: profile_name cannot be overridden", write("c.yaml", "profile_name: minimal\n")),
    Case("generate-policy-deeply-nested-json", [*GEN, "--episodes", "2", "--policy", "{tmp}/model"],
         "model/policy.json: JSON nested deeper than Python can parse",
         write("model/policy.json", '{"format": "esper-policy/1", "meta": ' + deep(100_000) + "}")),
    Case("generate-policy-nested-json", [*GEN, "--episodes", "2", "--policy", "{tmp}/model"],
         "model/policy.json: JSON nested 101 levels deep; expected at most 64",
         write("model/policy.json", DEEP_POLICY)),
    Case("generate-policy-empty", [*GEN, "--episodes", "2", "--policy", ""], "--policy '': expected heuristic"),
    Case("generate-policy-huge-network", [*GEN, "--episodes", "2", "--policy", "{tmp}/model"],
         "has more than 64 layers or 50,000,000 parameters",
         write("model/policy.json", json.dumps({"format": "esper-policy/1", "feature_names": ["epoch"], "centre": [0],
                                                "scale": [1], "actions": ["WAIT"], "weights_sha256": "0" * 64,
                                                "network": {"inputs": 1, "actions": 1, "hidden": 10 ** 9,
                                                            "layers": 2}}))),
    Case("generate-out-empty", ["generate", "--out", "", "--episodes", "1"], "argument --out: expected a path, got ''"),
    Case("generate-out-dangling-link", [*GEN, "--episodes", "1"], "out: a symbolic link to",
         link("out", "{tmp}/nowhere")),
    Case("generate-broken-current", [*GEN[:2], "{linked}", *GEN[3:], "--episodes", "4"],
         "current: missing; the last complete commit is .versions/", unlink("linked/current")),
    Case("train-hidden-huge", [*TRAIN, "--features", "all", "--hidden", "100000000"],
         "--hidden 100000000 with --layers 2 makes a network of at least"),
    Case("train-layers-huge", [*TRAIN, "--features", "all", "--layers", "100000"], "--layers must be at most 64"),
    Case("train-out-empty", [*TRAIN[:3], "", *TRAIN[4:], "--features", "all"], "argument --out: expected a path"),
    Case("train-out-dangling-link", [*TRAIN, "--features", "all"], "a symbolic link (to", link("model", "nowhere")),
    Case("inspect-empty-path", ["inspect", ""], "argument PACK: expected a path, got ''"),
    Case("inspect-deeply-nested-manifest", ["inspect", "{pack}"], "manifest.json: JSON nested 102 levels deep",
         edit_manifest(lambda d: d["provenance"].update(extra=json.loads(deep(100))))),
    Case("query-file-of-another-profile", ["query", "{diag}", "SELECT count(val_loss) FROM steps"],
         "column(s) (", swap_in_a_minimal_file),
    Case("query-copy-into-pack", ["query", "{pack}", "COPY (SELECT 1) TO '{pack}/steps/split=train/x.parquet'"],
         "only statements that read run on a pack"),
    Case("query-explain-analyze-copy", ["query", "{pack}", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{tmp}/x.csv'"],
         "got COPY"),
    Case("query-attach", ["query", "{pack}", "ATTACH '{tmp}/x.db'"], "got ATTACH"),
    Case("query-create", ["query", "{pack}", "CREATE TABLE t AS SELECT 1"], "got CREATE"),
    Case("query-set", ["query", "{pack}", "SET enable_external_access = true"], "got SET"),
    Case("query-read-outside", ["query", "{pack}", "SELECT * FROM read_csv('/etc/passwd')"],
         'Cannot access file "/etc/passwd"'),
    Case("query-glob-outside", ["query", "{pack}", "SELECT * FROM glob('/etc/*')"], 'Cannot access file "/etc/*"'),
    Case("query-glob-the-pack", ["query", "{pack}", "SELECT * FROM read_parquet('{pack}/steps/*/*.parquet')"],
         "Cannot access file"),
    Case("query-current-removed", ["query", "{linked}", "SELECT 1"],
         "linked/current: missing; the last complete commit is .versions/", unlink("linked/current")),
    Case("inspect-current-loop", ["inspect", "{linked}"], "linked/current: a link that leads to itself",
         both(unlink("linked/current"), link("linked/current", "current"))),
    Case("validate-current-dangling", ["validate", "{linked}"],
         "linked/current: a link to '.versions/000099', which holds no manifest",
         both(unlink("linked/current"), link("linked/current", ".versions/000099"))),
    Case("compare-out-empty", [*COMPARE, "--episodes", "16", "--out", ""], "argument --out: expected a path"),
    Case("compare-out-is-a-pack", [*COMPARE, "--episodes", "16", "--out", "{pack}"], "is a pack; --out is the report"),
    Case("compare-out-foreign-folder", [*COMPARE, "--episodes", "16", "--out", "{tmp}/mine"],
         "was not written by `esper compare`", write("mine/notes.txt", "precious\n")),
    Case("compare-out-dangling-link", [*COMPARE, "--episodes", "16", "--out", "{tmp}/out"], "a symbolic link to",
         link("out", "{tmp}/nowhere")),
    Case("compare-baseline-richer", [*COMPARE, "--baseline", "research", "--candidate", "minimal", "--episodes", "16",
                                     "--out", "{tmp}/out"], "--baseline research records"),
    Case("compare-hidden-huge", [*COMPARE, "--episodes", "1", "--hidden", "1000000", "--out", "{tmp}/out"],
         "makes a network of"),
    Case("compare-epochs-before-work", [*COMPARE[:-2], "--epochs", "1", "--episodes", "16", "--out", "{tmp}/out"],
         "--epochs must be >= 2"),
    Case("compare-too-few-episodes", [*COMPARE, "--episodes", "15", "--out", "{tmp}/out"],
         "--episodes 15 puts no episode in the test split(s)"),
    Case("control-check-seed-negative", ["control-check", "--episodes", "1", "--epochs", "2", "--seed", "-5",
                                         "--dataset", "synthetic"], "--seed must be >= 0, got -5"),
    Case("compare-one-replicate", [*COMPARE, "--replicates", "1", "--episodes", "16", "--out", "{tmp}/out"],
         "--replicates must be >= 2 (the interval is a t-interval over replicates), got 1"),
    Case("compare-no-test-split", [*COMPARE, "--dataset", "synthetic", "--episodes", "16", "--out", "{tmp}/out"],
         "--dataset synthetic has no held-out test split"),
    Case("compare-oracle-without-labels", [*COMPARE, "--target", "oracle", "--episodes", "16", "--out", "{tmp}/out"],
         "--target oracle learns from counterfactual labels; expected --counterfactual > 0"),
    Case("compare-other-design", [*COMPARE, "--episodes", "16", "--out", "{tmp}/out"],
         "holds a comparison with episodes=99, this run has 16",
         write("out/.esper-compare", json.dumps(CompareSpec(replicates=2, eval_per_cause=1, epochs=3,
                                                           episodes=99).design()))),
    Case("compare-earlier-version", [*COMPARE, "--episodes", "16", "--out", "{tmp}/out"],
         "written by an earlier version of `esper compare`", write("out/.esper-compare", "esper-compare\n")),
]

# ---- the table -----------------------------------------------------------------------------------

SHOW = ["profiles", "show", "standard"]

CASES: list[Case] = [
    # profiles show: profiles, --set overrides
    Case("profile-unknown", ["profiles", "show", "Standard"], "unknown profile 'Standard'; available: minimal"),
    Case("set-unknown-key", [*SHOW, "--set", "loss_landscape.perturbaton_scale=0.1"],
         "did you mean 'loss_landscape.perturbation_scale'?"),
    Case("set-float-for-int", [*SHOW, "--set", "history_length=1e1"], "history_length = 10.0"),
    Case("set-int-for-bool", [*SHOW, "--set", "track_weight_norms=1"], "track_weight_norms = 1"),
    Case("set-string-for-list", [*SHOW, "--set", "gradients.percentiles=median"], "gradients.percentiles"),
    Case("set-out-of-range", [*SHOW, "--set", "gradients.sample_size=100"],
         "gradients.sample_size = 100 is out of range; expected >= 1024"),
    Case("set-nan-threshold", [*SHOW, "--set", "gradients.vanishing_threshold=.nan"],
         "gradients.vanishing_threshold = nan is out of range; expected > 0"),
    Case("set-percentile-range", [*SHOW, "--set", "gradients.percentiles=[-1,50]"], "percentile -1 is outside"),
    Case("set-unknown-layer", [*SHOW, "--set", "gradients.layers=[conv1,conv9]"], "'conv9' is not a module"),
    Case("set-layer-without-parameters", [*SHOW, "--set", "gradients.layers=[slot1]"], "'slot1' is not a module"),
    Case("set-duplicate-layers", [*SHOW, "--set", "gradients.layers=[fc,fc]"], "both map to feature key 'fc'"),
    Case("set-malformed-yaml", [*SHOW, "--set", "gradients.percentiles=[1,50"], "--set gradients.percentiles"),
    Case("set-unsafe-tag", [*SHOW, "--set", 'history_length=!!python/object/apply:os.system ["true"]'],
         "unsupported YAML tag (only plain YAML values are accepted): !!python/object/apply:os.system"),
    Case("set-empty-key-part", [*SHOW, "--set", "gradients..enabled=true"], "expected KEY=VALUE"),
    Case("set-scalar-for-section", [*SHOW, "--set", "gradients=off"], "gradients = False"),
    Case("set-recursive-yaml", [*SHOW, "--set", "gradients.layers=&a [*a]"], "gradients.layers"),
    # profiles show: --config files
    Case("config-missing", [*SHOW, "--config", "{tmp}/absent.yaml"], "absent.yaml: config file not found"),
    Case("config-is-directory", [*SHOW, "--config", "{tmp}"], "cannot read config file (IsADirectoryError)"),
    Case("config-malformed-yaml", [*SHOW, "--config", "{tmp}/c.yaml"], "c.yaml:3:1: YAML syntax error",
         write("c.yaml", "gradients:\n  layers: [conv1\n")),
    Case("config-unsafe-tag", [*SHOW, "--config", "{tmp}/c.yaml"], "unsupported YAML tag",
         write("c.yaml", "history_length: !!python/object/new:os.system [echo hacked]\n")),
    Case("config-python-name-tag", [*SHOW, "--config", "{tmp}/c.yaml"], "!!python/name:os.system",
         write("c.yaml", "profile_name: !!python/name:os.system ''\n")),
    Case("config-not-a-mapping", [*SHOW, "--config", "{tmp}/c.yaml"], "expected a mapping of config keys, got list",
         write("c.yaml", "- history_length\n- 10\n")),
    Case("config-unknown-nested-key", [*SHOW, "--config", "{tmp}/c.yaml"],
         "unknown key 'per_class.track_acuracy'; did you mean 'per_class.track_accuracy'?",
         write("c.yaml", "per_class:\n  track_acuracy: true\n")),
    Case("config-wrong-type", [*SHOW, "--config", "{tmp}/c.yaml"], "loss_landscape.enabled = 'sometimes'",
         write("c.yaml", "loss_landscape:\n  enabled: sometimes\n")),
    Case("config-binary", [*SHOW, "--config", "{tmp}/c.yaml"], "cannot read config file (UnicodeDecodeError)",
         write("c.yaml", b"\xff\xfe\x00\x81history")),
    Case("config-two-documents", [*SHOW, "--config", "{tmp}/c.yaml"], "YAML syntax error",
         write("c.yaml", "history_length: 10\n---\nhistory_length: 20\n")),
    # generate: settings are refused before anything is written
    Case("generate-episodes-negative", [*GEN, "--episodes", "-1"], "--episodes must be >= 1, got -1"),
    Case("generate-workers-zero", [*GEN, "--episodes", "2", "--workers", "0"], "--workers must be >= 1, got 0"),
    Case("generate-seed-negative", [*GEN, "--episodes", "2", "--seed", "-1"], "--seed must be >= 0, got -1"),
    Case("generate-epsilon", [*GEN, "--episodes", "2", "--epsilon", "2"], "epsilon must be in [0, 1], got 2.0"),
    Case("generate-counterfactual-nan", [*GEN, "--episodes", "2", "--counterfactual", "nan"],
         "--counterfactual must be in [0, 1], got nan"),
    Case("generate-hindsight-zero", [*GEN, "--episodes", "2", "--hindsight-epochs", "0"],
         "--hindsight-epochs must be >= 1"),
    Case("generate-epochs-not-int", [*GEN, "--episodes", "2", "--epochs", "2.5"], "invalid int value: '2.5'"),
    Case("generate-policy", [*GEN, "--episodes", "2", "--policy", "random"],
         "--policy 'random': expected heuristic, never, or a policy directory written by `esper train`"),
    Case("generate-policy-dir-without-policy", [*GEN, "--episodes", "2", "--policy", "{tmp}"],
         "expected heuristic, never, or a policy directory"),
    Case("generate-policy-not-json", [*GEN, "--episodes", "2", "--policy", "{tmp}/model"],
         "model/policy.json: not valid JSON", write("model/policy.json", '{"format": ')),
    Case("generate-policy-wrong-format", [*GEN, "--episodes", "2", "--policy", "{tmp}/model"],
         "format is 'esper-policy/0'; expected 'esper-policy/1'",
         write("model/policy.json", '{"format": "esper-policy/0"}')),
    Case("generate-dataset", [*GEN, "--episodes", "2", "--dataset", "mnist"], "invalid choice: 'mnist'"),
    Case("generate-scenarios-empty", [*GEN, "--episodes", "2", "--scenarios", " , "], "--scenarios"),
    Case("generate-device", [*GEN, "--episodes", "2", "--device", "gpu"], "--device must be cpu or cuda"),
    Case("generate-missing-out", ["generate", "--episodes", "2"], "the following arguments are required: --out"),
    Case("generate-profile-unknown", [*GEN, "--episodes", "2", "--profile", "huge"], "unknown profile 'huge'"),
    Case("generate-config-directory", [*GEN, "--episodes", "2", "--config", "{tmp}"], "cannot read config file"),
    Case("generate-unknown-layer", [*GEN, "--episodes", "2", "--profile", "standard", "--set",
                                    "gradients.layers=[conv1,fc2]"], "'fc2' is not a module"),
    Case("generate-out-is-a-file", [*GEN, "--episodes", "2"], "exists and is not a pack",
         write("out", "precious\n")),
    Case("generate-out-not-empty", [*GEN, "--episodes", "2"], "exists and is not a pack",
         write("out/notes.txt", "precious\n")),
    Case("generate-out-below-a-file", [*GEN[:2], "{tmp}/file/pack", *GEN[3:], "--episodes", "2"],
         "file/pack: Not a directory", write("file", "precious\n")),
    Case("generate-resume-empty-manifest", [*GEN, "--episodes", "2", "--resume"], "not valid JSON",
         write("out/manifest.json", "")),
    Case("generate-resume-foreign-pack", [*GEN[:2], "{pack}", *GEN[3:], "--episodes", "4", "--resume"],
         "was not written by `esper generate`"),
    # train: refused before anything is written at --out
    Case("train-nonexistent-pack", [*TRAIN[:1], "{tmp}/nowhere", *TRAIN[2:], "--features", "all"],
         "nowhere: no such pack"),
    Case("train-unknown-feature", [*TRAIN, "--features", "base,val_los"], "'val_los' is not a profile"),
    Case("train-empty-selection", [*TRAIN, "--features", " , "], "features: empty selection"),
    Case("train-unknown-target", [*TRAIN[:-2], "--target", "best", "--features", "all"],
         "argument --target: invalid choice: 'best'"),
    Case("train-missing-features", TRAIN, "the following arguments are required: --features"),
    Case("train-out-not-empty", [*TRAIN, "--features", "all"], "exists and is not empty",
         write("model/notes.txt", "precious\n")),
    Case("train-out-is-a-file", [*TRAIN, "--features", "all"], "exists and is not empty", write("model", "x")),
    Case("train-lr-inf", [*TRAIN, "--features", "all", "--lr", "inf"], "--lr must be a finite number > 0"),
    Case("train-max-epochs-zero", [*TRAIN, "--features", "all", "--max-epochs", "0"], "--max-epochs must be"),
    Case("train-empty-pack", [*TRAIN[:1], "{empty}", *TRAIN[2:], "--features", "all"],
         "the train split holds no episodes"),
    Case("train-pack-without-val", [*TRAIN, "--features", "all"], "the val split holds no episodes"),
    Case("train-not-a-pack", [*TRAIN[:1], "{tmp}/dir", *TRAIN[2:], "--features", "all"], "not a pack",
         write("dir/notes.txt", "x")),
    # inspect / query / validate: packs that are absent, empty, damaged or hostile
    Case("no-command", [], "the following arguments are required: command"),
    Case("inspect-nonexistent", ["inspect", "{tmp}/nowhere"], "nowhere: no such pack"),
    Case("inspect-no-manifest", ["inspect", "{tmp}/dir"], "not a pack (expected a directory holding manifest.json)",
         write("dir/steps/part.parquet", "PAR1")),
    Case("validate-a-file", ["validate", "{tmp}/f"], "not a pack", write("f", "x")),
    Case("validate-empty-manifest", ["validate", "{tmp}/p"], "manifest.json: not valid JSON (line 1, column 1",
         write("p/manifest.json", "")),
    Case("inspect-manifest-is-a-list", ["inspect", "{tmp}/p"], "expected a JSON object, got list",
         write("p/manifest.json", "[]")),
    Case("inspect-manifest-not-utf8", ["inspect", "{tmp}/p"], "cannot read (UnicodeDecodeError)",
         write("p/manifest.json", b'{"format_version": "1.0\xff"}')),
    Case("query-newer-format", ["query", "{pack}", "SELECT 1"], "format_version 99.0 is newer",
         manifest_value("format_version", "99.0")),
    Case("validate-garbled-format", ["validate", "{pack}"], "format_version is 'one'",
         manifest_value("format_version", "one")),
    Case("inspect-missing-field", ["inspect", "{pack}"], "files: Field required",
         edit_manifest(lambda d: d.pop("files"))),
    Case("inspect-bad-config-in-manifest", ["inspect", "{pack}"], "telemetry_config.history_length",
         manifest_value("telemetry_config.history_length", 3)),
    Case("inspect-unknown-config-key", ["inspect", "{pack}"], "telemetry_config.bogus",
         manifest_value("telemetry_config.bogus", True)),
    Case("inspect-duplicate-file", ["inspect", "{pack}"], "files lists a path twice",
         edit_manifest(lambda d: d["files"].append(first_steps_file(d)))),
    Case("query-bad-sha256", ["query", "{pack}", "SELECT 1"], "sha256",
         edit_manifest(lambda d: first_steps_file(d).update(sha256="xyz"))),
    Case("query-directory-for-data", ["query", "{pack}", "SELECT count(*) FROM steps"], "manifest.json says",
         directory_in_place_of_data),
    Case("query-path-escapes-pack", ["query", "{pack}", "SELECT count(*) FROM steps"],
         "'../evil.parquet' is not a plain relative path inside the pack",
         escape_to("../evil.parquet")),
    Case("query-absolute-path", ["query", "{pack}", "SELECT count(*) FROM steps"],
         "evil.parquet' is not a plain relative path inside the pack", escape_to("{tmp}/evil.parquet")),
    Case("query-garbled-arrow-schema", ["query", "{pack}", "SELECT 1"], "arrow_schemas",
         manifest_value("arrow_schemas.steps", "bm90IGFuIGFycm93IHNjaGVtYQ==")),
    Case("query-unknown-table", ["query", "{pack}", "SELECT * FROM stepz"], "Table with name stepz does not exist"),
    Case("query-conversion-error", ["query", "{pack}", "SELECT 'x'::INTEGER"], "Conversion Error"),
    Case("query-blank-sql", ["query", "{pack}", "   "], "no SQL statement given"),
    Case("query-missing-sql-file", ["query", "{pack}", "queries/nope.sql"], "no such file, and no query 'nope'"),
    Case("query-sql-file-not-utf8", ["query", "{pack}", "{tmp}/q.sql"], "q.sql", write("q.sql", b"SELECT \xff")),
    Case("query-bad-format", ["query", "{pack}", "SELECT 1", "--format", "xml"], "invalid choice: 'xml'"),
    Case("query-empty-pack-bad-column", ["query", "{empty}", "SELECT nope FROM steps"],
         'Referenced column "nope" not found'),
    *RELIABILITY_CASES,
]

# Cases that fail because of a bug in a file this suite's authors do not own; reported, not hidden.


def _param(case: Case) -> Any:
    return pytest.param(case, id=case.id)


# ---- running a case ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{pack}, {empty} and {diag} are copied as a tool that follows links would (the earlier layout);
    {linked} keeps the links (the layout a writer leaves); {generated} was written by `esper generate`."""
    root = tmp_path_factory.mktemp("packs")
    write_pack(root / "pack", make_episodes(0, 3, steps=3, profile="minimal"), profile="minimal")
    write_pack(root / "empty", [], profile="minimal")
    write_pack(root / "diag", make_episodes(0, 3, steps=3, profile="diagnostic"), profile="diagnostic")
    assert main(["generate", "--profile", "diagnostic", "--dataset", "synthetic", "--epochs", "3", "--episodes", "1",
                 "--counterfactual", "0", "--quiet", "--out", str(root / "generated")]) == 0
    return {"pack": root / "pack", "empty": root / "empty", "diag": root / "diag", "linked": root / "pack",
            "generated": root / "generated"}


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every path under `root` and its bytes (None for folders, '-> target' for symbolic links)."""
    return {str(p.relative_to(root)): f"-> {os.readlink(p)}" if p.is_symlink() else None if p.is_dir()
            else p.read_bytes() for p in sorted(root.rglob("*"))}


def prepare(case: Case, tmp: Path, packs: dict[str, Path]) -> list[str]:
    for name, source in packs.items():
        if any(f"{{{name}}}" in a for a in case.argv):
            shutil.copytree(source, tmp / name, symlinks=name in ("linked", "generated"))
    if case.setup:
        case.setup(tmp)
    argv = []
    for a in case.argv:
        for name in ("tmp", *packs):
            a = a.replace(f"{{{name}}}", str(tmp if name == "tmp" else tmp / name))
        argv.append(a)
    return argv


def test_the_table_is_large_and_varied() -> None:
    """The issue asks for at least 30 bad inputs spread over every command and input kind."""
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] if c.argv else "" for c in CASES}
    assert {"profiles", "generate", "inspect", "query", "validate"} <= commands


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, tmp_path: Path, packs: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the input, the user gets one line naming the problem, and no file is created or touched."""
    argv = prepare(case, tmp_path, packs)
    before = snapshot(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert code == 2, (code, err)
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("esper: error: "), err
    assert case.needle in err, err
    assert snapshot(tmp_path) == before, "the command changed, created or removed files"


# ---- a pack with zero episodes is not an error -----------------------------------------------------

def test_a_pack_with_zero_episodes_reads_as_empty(packs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """An empty pack is valid data: queries see empty views of the right columns, validate calls it sound."""
    empty = str(packs["empty"])
    assert main(["query", empty, "SELECT count(*) AS n, count(val_loss) AS v FROM steps", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "n,v\n0,0\n"
    assert main(["query", empty, "SELECT * FROM decisions", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["validate", empty]) == 0
    assert "sound (0 files, 0 episodes, 0 steps)" in capsys.readouterr().out
    assert main(["inspect", empty]) == 0
    assert "0 episodes" in capsys.readouterr().out


# ---- a real terminal -----------------------------------------------------------------------------

ESPER = Path(sys.executable).with_name("esper")


@pytest.mark.parametrize("argv", [
    ["generate", "--episodes", "-5", "--out", "{tmp}/out", "--dataset", "synthetic"],
    ["query", "{tmp}/pack", "SELECT * FROM nowhere"],
])
def test_the_installed_command_prints_no_traceback(argv: list[str], tmp_path: Path, packs: dict[str, Path]) -> None:
    """The console script, in a separate process, exits 2 with one line: no traceback escapes main()."""
    shutil.copytree(packs["pack"], tmp_path / "pack")
    before = snapshot(tmp_path)
    command = [str(ESPER)] if ESPER.exists() else [sys.executable, "-m", "pipelines.cli"]
    done = subprocess.run([*command, *(a.replace("{tmp}", str(tmp_path)) for a in argv)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("esper: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before
