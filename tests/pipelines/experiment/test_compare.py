"""`esper compare` on a tiny configuration: replicates, one shared evaluation set, one primary measure.

Two replicates (each its own pack and models), one evaluation episode per cause, short episodes. The
numbers are then recomputed independently: the evaluation scores through DuckDB over the JSON-lines
log, the cause-weighted primary and its t-interval with scipy, the offline expert agreement from a
float64 re-implementation of the saved networks on the packs' Parquet files, and the evaluation
set's isolation from every training pack from the packs' own episode tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats
from support.policies import mlp_logits, standardize

from pipelines.cli import main
from pipelines.environment.scenarios import SCENARIOS
from pipelines.experiment.replicates import minimum_detectable_effect, replicates_for_power
from telemetry.packs.manifest import read_manifest

RUN = ["compare", "--episodes", "17", "--epochs", "3", "--eval-per-cause", "1", "--max-epochs", "5",
       "--hidden", "16", "--workers", "2", "--quiet"]
LEARNED = ("baseline", "candidate", "ablation")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "report"
    assert main([*RUN, "--replicates", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def results(report: Path) -> dict[str, Any]:
    return json.loads((report / "results.json").read_text())


@pytest.fixture(scope="module")
def summary(report: Path) -> dict[str, Any]:
    return json.loads((report / "summary.json").read_text())


def _scores(report: Path) -> dict[tuple[str, int], float]:
    """(policy, episode) -> primary score, read by DuckDB from the evaluation log."""
    rows = duckdb.sql(f"SELECT policy, episode, score FROM read_json_auto('{report}/evaluation.jsonl')").fetchall()
    return {(p, int(e)): float(s) for p, e, s in rows}


def _cause_weighted(values: dict[int, float], cause: dict[int, str]) -> float:
    causes = sorted(set(cause.values()))
    return float(np.mean([np.mean([v for e, v in values.items() if cause[e] == c]) for c in causes]))


def test_the_evaluation_set_is_stratified_and_the_same_for_every_policy(report: Path, results: dict[str, Any]) -> None:
    episodes = results["evaluation_set"]["episodes"]
    assert [e["cause"] for e in episodes] == list(SCENARIOS)  # one per cause, in rotation
    scores = _scores(report)
    policies = {p for p, _ in scores}
    models = {f"r{r['index']}/{m}" for r in results["replicates"] for arm in LEARNED for m in r["models"][arm]}
    assert policies == {"never", "heuristic", "expert"} | models and len(models) == 6
    for policy in policies:
        assert sorted(e for p, e in scores if p == policy) == [e["index"] for e in episodes], policy


def test_the_evaluation_set_is_disjoint_from_every_training_pack(report: Path, results: dict[str, Any]) -> None:
    """Its environment seeds and scenario parameters occur in no replicate's pack (read from the packs'
    Parquet files), and it does not depend on the replicate: a second comparison with another --seed
    plays the identical set."""
    evaluation = {e["env_seed"] for e in results["evaluation_set"]["episodes"]}
    params = {json.dumps(e["scenario"], sort_keys=True) for e in results["evaluation_set"]["episodes"]}
    for replicate in results["replicates"]:
        pack = Path(replicate["pack"]["path"])
        table = duckdb.sql(f"SELECT seed, scenario_params FROM read_parquet('{pack}/episodes/**/*.parquet')").fetchall()
        assert len(table) == 17
        assert not evaluation & {int(s) for s, _ in table}
        assert not params & {json.dumps(json.loads(p), sort_keys=True) for _, p in table}
    seeds = {r["seed"] for r in results["replicates"]}
    assert seeds == {0, 1}


def test_the_primary_is_the_cause_weighted_difference_with_scipys_t_interval(report: Path, results: dict[str, Any],
                                                                             summary: dict[str, Any]) -> None:
    scores = _scores(report)
    cause = {e["index"]: e["cause"] for e in results["evaluation_set"]["episodes"]}
    per_replicate = []
    for replicate in results["replicates"]:
        arm = {a: {e: np.mean([scores[(f"r{replicate['index']}/{m}", e)] for m in replicate["models"][a]])
                   for e in cause} for a in ("candidate", "baseline")}
        per_replicate.append(_cause_weighted({e: arm["candidate"][e] - arm["baseline"][e] for e in cause}, cause))
    assert summary["primary_per_replicate"] == pytest.approx(per_replicate)
    x = np.array(per_replicate)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert summary["primary"]["mean"] == pytest.approx(x.mean())
    assert summary["primary"]["ci95"] == pytest.approx([low, high])
    assert summary["replicates"] == 2 and "t-interval over replicates" in summary["method"]


def test_references_and_the_best_learned_arm(report: Path, results: dict[str, Any], summary: dict[str, Any]) -> None:
    scores = _scores(report)
    cause = {e["index"]: e["cause"] for e in results["evaluation_set"]["episodes"]}
    heuristic = _cause_weighted({e: scores[("heuristic", e)] for e in cause}, cause)
    assert summary["arms"]["heuristic"]["mean"] == pytest.approx(heuristic)
    best = summary["best_learned_arm"]
    assert summary["arms"][best]["mean"] == max(summary["arms"][a]["mean"] for a in LEARNED)
    per_replicate = [_cause_weighted({e: np.mean([scores[(f"r{r['index']}/{m}", e)] for m in r["models"][best]])
                                      - scores[("heuristic", e)] for e in cause}, cause)
                     for r in results["replicates"]]
    assert summary["best_learned_minus_heuristic"]["mean"] == pytest.approx(np.mean(per_replicate))


def test_the_power_plan_follows_from_the_replicates(summary: dict[str, Any]) -> None:
    sd = float(np.std(summary["primary_per_replicate"], ddof=1))
    power = summary["power"]
    assert power["between_replicate_sd"] == pytest.approx(sd)
    assert power["ceiling"] == pytest.approx(summary["secondary"]["expert - baseline"]["mean"])
    assert power["replicates_for_1_point"] == replicates_for_power(1.0, sd)
    assert power["minimum_detectable_effect"] == pytest.approx(minimum_detectable_effect(sd, 2))


def _forward64(model_dir: Path, table: pa.Table) -> np.ndarray:
    """The saved MLP in float64 numpy on the table's rows: standardise, layers, masked argmax."""
    meta = json.loads((model_dir / "policy.json").read_text())
    state = torch.load(model_dir / "weights.pt", weights_only=True)
    raw = np.column_stack([np.array(table.column(n).to_pylist(), dtype=np.float64) for n in meta["feature_names"]])
    z = standardize(raw, np.array(meta["centre"]), np.array(meta["scale"]))
    masks = np.array(table.column("action_mask").to_pylist(), dtype=bool)
    return np.where(masks, mlp_logits(state, z), -np.inf).argmax(axis=1)


def test_offline_expert_agreement_matches_the_saved_models(report: Path, results: dict[str, Any]) -> None:
    for replicate in results["replicates"]:
        pack = Path(replicate["pack"]["path"])
        manifest = read_manifest(pack)
        files = [pack / f.path for f in manifest.files if f.table == "steps" and f.split == "test"]
        test = pa.concat_tables(pq.read_table(f) for f in files)
        for arm in LEARNED:
            (model,) = replicate["models"][arm]
            chosen = _forward64(pack.parent / "models" / model, test)
            agree: dict[str, list[float]] = {}
            for episode, expert, choice in zip(test.column("episode_id").to_pylist(),
                                               test.column("expert_action").to_pylist(), chosen, strict=True):
                agree.setdefault(episode, []).append(float(manifest.actions[choice] == expert))
            expected = {e: float(np.mean(v)) for e, v in agree.items()}
            assert replicate["offline"][arm]["expert_agreement"] == pytest.approx(expected), (replicate["index"], arm)


def test_each_arm_sees_its_features(report: Path, results: dict[str, Any]) -> None:
    replicate = results["replicates"][0]
    manifest = read_manifest(Path(replicate["pack"]["path"]))
    groups = manifest.feature_schema.groups
    expected = {"baseline": manifest.profiles["minimal"], "candidate": manifest.profiles["diagnostic"],
                "ablation": list(dict.fromkeys([*manifest.profiles["minimal"], *groups["gradients"]]))}
    for arm, names in expected.items():
        (model,) = replicate["models"][arm]
        saved = json.loads((report / "replicate-0" / "models" / model / "policy.json").read_text())
        assert saved["feature_names"] == names, arm


def test_the_report_prints_the_summary(report: Path, summary: dict[str, Any]) -> None:
    text = (report / "report.md").read_text()
    p = summary["primary"]
    printed = f"{p['mean']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]"
    assert printed in text.split("## Primary")[1].split("## Secondary")[0]
    assert re.search(r"no detectable difference|gave (better|worse) policies", summary["verdict"])
    assert f"{p['mean']:+.2f} points" in summary["verdict"]
    assert (report / "plots" / "primary.png").stat().st_size > 1000


def test_a_rerun_reuses_everything_and_more_replicates_reuse_the_first(report: Path, results: dict[str, Any],
                                                                        summary: dict[str, Any]) -> None:
    log = (report / "evaluation.jsonl").read_text()
    weights = {p: p.stat().st_mtime_ns for p in report.glob("replicate-*/models/*/weights.pt")}
    assert main([*RUN, "--replicates", "2", "--out", str(report)]) == 0
    assert (report / "evaluation.jsonl").read_text() == log  # no episode played twice
    assert json.loads((report / "summary.json").read_text())["primary"] == summary["primary"]
    assert main([*RUN, "--replicates", "3", "--pilot", "--out", str(report)]) == 0
    grown = json.loads((report / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    assert grown["replicates"][:2] == results["replicates"]
    assert len(grown["replicates"]) == 3 and grown["replicates"][2]["seed"] == 2
    new = (report / "evaluation.jsonl").read_text()[len(log):].splitlines()
    assert sorted({json.loads(line)["policy"] for line in new}) == ["r2/ablation-s0", "r2/baseline-s0",
                                                                     "r2/candidate-s0"]
    pilot = json.loads((report / "summary.json").read_text())
    assert pilot["verdict"].startswith("Pilot:") and "replicates" in pilot["verdict"]
