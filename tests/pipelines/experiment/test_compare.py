"""`esper compare` on a tiny configuration: a complete report whose numbers all follow from results.json.

The run generates its own small candidate-profile pack (synthetic data, short episodes, many
counterfactual branches so every split has oracle labels), trains two seeds per arm, evaluates
offline and online, and writes the report. Everything is then recomputed independently: summaries
from the per-episode values (the documented bootstrap), per-policy values from the online packs'
Parquet files through DuckDB, arm values from the per-seed values, oracle agreement from a float64
re-implementation of the saved networks, and the report's printed numbers from results.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support.policies import mlp_logits, standardize

from pipelines.cli import main
from pipelines.experiment.compare import CompareError, CompareSpec, _settled
from telemetry.packs.manifest import read_manifest
from telemetry.packs.reader import open_pack

GEN = ["--dataset", "synthetic", "--epochs", "6", "--counterfactual", "1", "--counterfactual-epochs", "2"]
RUN = ["compare", "--baseline", "minimal", "--candidate", "diagnostic", "--episodes", "17", "--seeds", "2",
       "--online-episodes", "3", "--max-epochs", "30", "--workers", "2", "--quiet", *GEN]
ARMS = ("baseline", "candidate", "heuristic", "never")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "report"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def results(report: Path) -> dict[str, Any]:
    return json.loads((report / "results.json").read_text())


def _bootstrap(values: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """The method results.json documents, written out again."""
    x = np.asarray(values, dtype=np.float64)
    draws = x[np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def _summaries(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every {mean, low, high, n, by_episode} in the results, with where it sits."""
    if isinstance(node, dict):
        if {"mean", "low", "high", "n", "by_episode"} <= set(node):
            return [(path, node)]
        return [s for key, value in node.items() for s in _summaries(value, f"{path}.{key}")]
    return []


def test_the_report_is_complete(report: Path, results: dict[str, Any]) -> None:
    for name in ("report.md", "results.json", "plots/online.png", "plots/differences.png", "plots/per_cause.png",
                 "plots/offline.png"):
        assert (report / name).is_file(), name
    for png in (report / "plots").glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png.name
    text = (report / "report.md").read_text()
    for image in ("plots/online.png", "plots/differences.png", "plots/per_cause.png", "plots/offline.png"):
        assert f"]({image})" in text
    assert results["verdict"] in text
    assert set(results["online"]["arms"]) == set(ARMS)
    assert len(results["arms"]["baseline"]["models"]) == len(results["arms"]["candidate"]["models"]) == 2


def test_every_summary_is_the_mean_and_bootstrap_interval_of_its_values(results: dict[str, Any]) -> None:
    summaries = _summaries(results)
    assert len(summaries) > 40
    boot = results["bootstrap"]
    for where, s in summaries:
        values = [s["by_episode"][e] for e in sorted(s["by_episode"])]
        assert s["n"] == len(values), where
        assert s["mean"] == pytest.approx(float(np.mean(values)), abs=1e-9), where
        if len(values) >= 2:
            low, high = _bootstrap(values, boot["resamples"], boot["seed"])
            assert (s["low"], s["high"]) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9)), where
        else:
            assert s["low"] is None and s["high"] is None, where


def test_arms_average_their_seeds_and_differences_are_paired(results: dict[str, Any]) -> None:
    online = results["online"]
    for arm in ("baseline", "candidate"):
        models = results["arms"][arm]["models"]
        for metric in ("final_accuracy", "fossilized", "params_added"):
            expected = {e: np.mean([online["policies"][m][metric][e] for m in models]) for e in online["episodes"]}
            assert online["arms"][arm][metric]["by_episode"] == pytest.approx(expected)
    for name, by_metric in online["differences"].items():
        a, b = name.split(" - ")
        for metric, s in by_metric.items():
            expected = {e: online["arms"][a][metric]["by_episode"][e] - online["arms"][b][metric]["by_episode"][e]
                        for e in online["episodes"]}
            assert s["by_episode"] == pytest.approx(expected), (name, metric)


def test_online_values_are_the_online_packs_episodes(report: Path, results: dict[str, Any]) -> None:
    """DuckDB over each online pack's Parquet files gives the same per-episode outcomes, and every
    policy drove the same episodes (ids and hidden causes)."""
    online = results["online"]
    policies = online["policies"]
    assert set(policies) == {"heuristic", "never", *results["arms"]["baseline"]["models"],
                             *results["arms"]["candidate"]["models"]}
    for name, metrics in policies.items():
        rows = duckdb.sql(
            f"SELECT episode_id, scenario, final_accuracy, params_added, "
            f"len([s FOR s IN seed_outcomes IF s.outcome = 'fossilized']) AS fossilized "
            f"FROM read_parquet('{report}/online/{name}/episodes/**/*.parquet') ORDER BY episode_id").fetchall()
        assert [r[0] for r in rows] == online["episodes"], name
        assert {r[0]: r[1] for r in rows} == online["scenario"], name
        assert metrics["final_accuracy"] == pytest.approx({r[0]: r[2] for r in rows}), name
        assert metrics["params_added"] == {r[0]: float(r[3]) for r in rows}, name
        assert metrics["fossilized"] == {r[0]: float(r[4]) for r in rows}, name
    generation = read_manifest(report / "online" / "never").provenance.model_extra["generation"]
    trained_on = read_manifest(report / "pack").provenance.model_extra["generation"]
    assert generation["rng_seed"] != trained_on["rng_seed"]  # fresh episodes
    assert generation["scenarios"] == trained_on["scenarios"] and generation["epsilon"] == 0.0


def _forward64(model_dir: Path, table: pa.Table, masks: np.ndarray) -> np.ndarray:
    """The saved MLP in float64 numpy on the table's rows: standardize, layers, masked argmax."""
    meta = json.loads((model_dir / "policy.json").read_text())
    state = torch.load(model_dir / "weights.pt", weights_only=True)
    raw = np.column_stack([np.array(table.column(n).to_pylist(), dtype=np.float64) for n in meta["feature_names"]])
    z = standardize(raw, np.array(meta["centre"]), np.array(meta["scale"]))
    return np.where(masks, mlp_logits(state, z), -np.inf).argmax(axis=1)


def test_oracle_agreement_matches_the_saved_models_on_the_test_episodes(report: Path,
                                                                         results: dict[str, Any]) -> None:
    manifest = read_manifest(report / "pack")
    files = [report / "pack" / f.path for f in manifest.files if f.table == "steps" and f.split == "test"]
    test = pa.concat_tables(pq.read_table(f) for f in files)
    test = test.filter(test.column("best_action").is_valid())
    assert test.num_rows == results["offline"]["test_steps_with_oracle_label"] > 0
    masks = np.array(test.column("action_mask").to_pylist(), dtype=bool)
    for arm in ("baseline", "candidate"):
        per_seed = []
        for model in results["arms"][arm]["models"]:
            chosen = _forward64(report / "models" / model, test, masks)
            agree: dict[str, list[float]] = {}
            for episode, best, choice in zip(test.column("episode_id").to_pylist(),
                                             test.column("best_action").to_pylist(), chosen, strict=True):
                agree.setdefault(episode, []).append(float(manifest.actions[choice] == best))
            per_seed.append({e: float(np.mean(v)) for e, v in agree.items()})
            assert results["offline"]["models"][model]["agreement"] == pytest.approx(per_seed[-1])
        expected = {e: np.mean([s[e] for s in per_seed]) for e in per_seed[0]}
        assert results["offline"]["oracle_agreement"][arm]["by_episode"] == pytest.approx(expected)


def test_the_baseline_sees_exactly_its_profile(report: Path, results: dict[str, Any]) -> None:
    profiles = read_manifest(report / "pack").profiles
    for arm, profile in (("baseline", "minimal"), ("candidate", "diagnostic")):
        for model in results["arms"][arm]["models"]:
            names = json.loads((report / "models" / model / "policy.json").read_text())["feature_names"]
            assert names == profiles[profile], model


def _ci(s: dict[str, Any], scale: float = 1.0, sign: str = "") -> str:
    return f"{scale * s['mean']:{sign}.2f} [{scale * s['low']:{sign}.2f}, {scale * s['high']:{sign}.2f}]"


def test_the_report_prints_the_results_numbers(report: Path, results: dict[str, Any]) -> None:
    text = (report / "report.md").read_text()
    section = text.split("## Online")[1].split("### Per hidden cause")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    online = results["online"]
    for arm in ARMS:
        label = next(k for k in rows if k == arm or k.startswith(f"{arm} ("))
        if online["arms"][arm]["final_accuracy"]["low"] is not None:
            assert _ci(online["arms"][arm]["final_accuracy"]) in rows[label]
    diff = online["differences"]["candidate - baseline"]["final_accuracy"]
    if diff["low"] is not None:
        assert _ci(diff, sign="+") in rows["candidate - baseline"]
        assert _ci(diff, sign="+").split(" [")[0] in results["verdict"]
        expected = ("higher" if diff["low"] > 0 else "lower" if diff["high"] < 0 else "No detectable difference")
        assert expected in results["verdict"]
    agreement = results["offline"]["oracle_agreement"]
    assert re.search(re.escape(_ci(agreement["candidate"], 100)), text)


def test_a_rerun_reuses_every_phase_and_gives_the_same_numbers(report: Path, results: dict[str, Any],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in (report / "models").glob("*/weights.pt")}
    assert main([*RUN, "--out", str(report)]) == 0
    again = json.loads((report / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in before} == before
    for key in ("offline", "online", "verdict", "arms"):
        assert again[key] == results[key], key


@pytest.mark.parametrize("change, message", [
    (["--baseline", "nosuch"], "--baseline 'nosuch': expected a profile"),
    (["--candidate", "minimal"], "both 'minimal'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--target", "magic"], "invalid choice: 'magic'"),
    (["--episodes", "0"], "--episodes is 0; expected >= 1"),
    (["--online-episodes", "0"], "--online-episodes must be >= 1"),
])
def test_bad_settings_are_one_line_and_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     change: list[str], message: str) -> None:
    out = tmp_path / "report"
    args = [*RUN, "--out", str(out)]
    flag = change[0]
    if flag in args:
        i = args.index(flag)
        args[i:i + 2] = change
    else:
        args += change
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("esper: error:") and message in err, err
    assert not out.exists()


def test_a_pack_without_oracle_labels_is_refused_for_the_oracle_target(report: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([*RUN, "--out", str(out), "--pack", str(report / "online" / "never")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no step carries a counterfactual label" in err, err
    assert not (out / "models").exists()


def test_a_pack_without_the_candidate_features_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack, out = tmp_path / "minimal", tmp_path / "report"
    assert main(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--episodes", "2",
                 "--out", str(pack), "--quiet"]) == 0
    capsys.readouterr()
    assert main([*RUN, "--out", str(out), "--pack", str(pack)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not hold the candidate profile 'diagnostic'" in err, err
    assert not (out / "models").exists()


def test_with_a_pack_its_own_settings_are_used_and_recorded(report: Path) -> None:
    """--pack once ignored --seed/--epochs/--dataset and recorded them anyway, so two 'replicates' of one
    pack looked independent: now the pack's settings are the spec's, and another value is refused."""
    pack = open_pack(report / "pack")
    generation = pack.manifest.provenance.model_extra["generation"]
    spec = _settled(CompareSpec(seeds=1, episodes=None), pack)
    assert (spec.seed, spec.epochs, spec.dataset, spec.counterfactual_fraction, spec.counterfactual_epochs,
            spec.episodes) == (generation["rng_seed"], generation["epochs"], generation["dataset"],
                               generation["counterfactual_fraction"], generation["counterfactual_epochs"], 17)
    assert _settled(replace(spec, seeds=3), pack) == replace(spec, seeds=3)  # the same values given: fine
    for change, flag in (({"seed": 5}, "--seed 5"), ({"epochs": 25}, "--epochs 25"),
                         ({"dataset": "digits"}, "--dataset digits"), ({"counterfactual_fraction": 0.1},
                                                                       "--counterfactual 0.1")):
        with pytest.raises(CompareError, match=f"{flag} conflicts with --pack"):
            _settled(CompareSpec(seeds=1, episodes=None, **change), pack)
