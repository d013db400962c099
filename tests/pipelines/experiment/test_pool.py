"""`esper pool`: replicates of the comparison read together, with the pack-to-pack variation kept.

Runs on the three replicates recorded in docs/experiments (real results of `esper compare`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from support import REPO

from pipelines.cli import main
from pipelines.experiment.bootstrap import bootstrap_ci, hierarchical_ci
from pipelines.experiment.pool import MEASURES, PoolError, pool, read_results

DOCS = REPO / "docs" / "experiments"
REPLICATES = sorted(DOCS.glob("compare-*-seed*"))


def _reference(groups: list[list[float]], resamples: int, seed: int) -> tuple[float, float]:
    """The documented two-level resampling, written out with explicit loops."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        picked = rng.integers(0, len(groups), len(groups))
        level = []
        for i in picked:
            values = np.asarray(groups[i], dtype=np.float64)
            level.append(values[rng.integers(0, len(values), len(values))].mean())
        means.append(float(np.mean(level)))
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def test_hierarchical_interval_follows_the_documented_method() -> None:
    rng = np.random.default_rng(5)
    groups = [list(rng.normal(m, 1.0, n)) for m, n in ((0.0, 12), (3.0, 7), (1.0, 20))]
    mean, low, high = hierarchical_ci(groups, resamples=500, seed=3)
    assert mean == pytest.approx(np.mean([np.mean(g) for g in groups]))
    assert (low, high) == pytest.approx(_reference(groups, 500, 3))


def test_hierarchical_interval_is_wider_than_pooling_when_groups_disagree() -> None:
    """Three packs whose effects differ: pooling their episodes hides that, the hierarchy does not."""
    rng = np.random.default_rng(0)
    groups = [list(rng.normal(m, 0.5, 30)) for m in (4.0, 0.0, 0.1)]
    _, low, high = hierarchical_ci(groups)
    _, flat_low, flat_high = bootstrap_ci([v for g in groups for v in g])
    assert high - low > 2 * (flat_high - flat_low)
    assert low < 0.5 < flat_low  # pooled flat looks conclusive; the hierarchy says it is not


def test_constant_groups_give_a_point_interval() -> None:
    assert hierarchical_ci([[2.0] * 4, [2.0] * 9]) == (2.0, 2.0, 2.0)


def test_pool_reports_each_replicate_and_the_mean_of_their_means() -> None:
    assert len(REPLICATES) >= 2
    reports = [read_results(r) for r in REPLICATES]
    pooled = pool(reports, [str(r) for r in REPLICATES])
    assert pooled["seeds"] == [r["settings"]["seed"] for r in reports]
    for label, path, _ in MEASURES:
        summaries = list(reports)
        for key in path:
            summaries = [s[key] for s in summaries]
        measure = pooled["measures"][label]
        for own, recorded in zip(measure["replicates"], summaries, strict=True):
            assert own == {k: v for k, v in recorded.items() if k != "by_episode"}
        p = measure["pooled"]
        assert p["mean"] == pytest.approx(np.mean([np.mean(list(s["by_episode"].values())) for s in summaries]))
        assert p["episodes"] == sum(s["n"] for s in summaries)
        assert p["low"] <= p["mean"] <= p["high"]


def test_the_cli_prints_the_table_and_a_verdict_that_matches_the_interval(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pool", *map(str, REPLICATES)]) == 0
    text = capsys.readouterr().out
    assert main(["pool", "--json", *map(str, REPLICATES)]) == 0
    pooled = json.loads(capsys.readouterr().out)
    primary = pooled["measures"][MEASURES[0][0]]["pooled"]
    interval = f"{primary['mean']:+.2f} [{primary['low']:+.2f}, {primary['high']:+.2f}]"
    row = next(line for line in text.splitlines() if line.startswith(f"| {MEASURES[0][0]}"))
    assert row.endswith(f"| {interval} |")
    expected = "higher" if primary["low"] > 0 else "lower" if primary["high"] < 0 else "no detectable difference"
    assert expected in text.splitlines()[-1]


def _copy(tmp_path: Path, source: Path, name: str, change=None) -> Path:
    results = json.loads((source / "results.json").read_text())
    if change:
        change(results)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.mark.parametrize("change, needle", [
    (lambda r: r["settings"].update(candidate="research"), "candidate='research'"),
    (lambda r: r["settings"].update(target="heuristic"), "target='heuristic'"),
    (lambda r: r["settings"].update(seed=0), "share a run seed"),
])
def test_replicates_of_another_design_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  change, needle: str) -> None:
    first = _copy(tmp_path, REPLICATES[0], "a")
    other = _copy(tmp_path, REPLICATES[1], "b", change)
    assert main(["pool", str(first), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("esper: error:") and needle in err, err


@pytest.mark.parametrize("make, needle", [
    (lambda d: None, "no results.json"),
    (lambda d: (d / "results.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "results.json").write_text('{"format": "other"}'), "not an `esper compare` result"),
])
def test_a_folder_that_is_not_a_report_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  make, needle: str) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    make(bad)
    assert main(["pool", str(REPLICATES[0]), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_one_replicate_is_not_a_pool() -> None:
    with pytest.raises(PoolError, match="at least 2 replicates"):
        pool([copy.deepcopy(read_results(REPLICATES[0]))], ["one"])
