"""`esper control-check`: paired strategies per cause, its JSON answer recomputed from the raw runs."""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats

from pipelines.cli import main
from pipelines.environment.scenarios import SCENARIOS

STRATEGIES = ["never", "heuristic", "conv", "norm", "oracle"]


def esper(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def t_interval(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory):
    results = tmp_path_factory.mktemp("cc") / "runs.jsonl"
    code, out, _ = esper(["control-check", "--episodes", "12", "--epochs", "3", "--germinate-at", "1",
                          "--train-epochs", "1", "--seed", "5", "--strategies", ",".join(STRATEGIES),
                          "--json", "--results", str(results)])
    assert code == 0
    return json.loads(out), [json.loads(line) for line in results.read_text().splitlines()]


def test_every_cause_gets_the_same_episodes_and_every_strategy_plays_each(check):
    answer, runs = check
    assert answer["episodes"] == 12 and answer["per_cause_episodes"] == {c: 2 for c in SCENARIOS}
    assert answer["strategies"] == STRATEGIES and len(runs) == 12 * len(STRATEGIES)
    for strategy in STRATEGIES:
        assert set(answer["per_cause"]["healthy"][strategy]) == {"mean", "ci95"}
    assert all(r["cause"] == SCENARIOS[r["episode"] % 6] for r in runs)
    never = [r for r in runs if r["strategy"] == "never"]
    assert all(r["actions"] == [] and r["cost"] == 0.0 and r["score"] == r["test_accuracy"] for r in never)


def test_value_of_knowing_cause_is_paired_by_episode(check):
    """Recomputed here from the raw runs: best cause-blind per cause in hindsight minus best overall."""
    answer, runs = check
    score: dict[int, dict[str, float]] = defaultdict(dict)
    cause = {}
    for r in runs:
        score[r["episode"]][r["strategy"]] = r["score"]
        cause[r["episode"]] = r["cause"]
    blind = [s for s in STRATEGIES if s != "oracle"]
    overall = {s: np.mean([score[e][s] for e in score]) for s in blind}
    best_blind = max(blind, key=overall.get)
    best = {c: max(blind, key=lambda s, c=c: np.mean([score[e][s] for e in score if cause[e] == c]))
            for c in SCENARIOS}
    assert answer["best_cause_blind"] == best_blind and answer["best_per_cause_in_hindsight"] == best
    for key, diffs in (
        ("value_of_knowing_cause", [score[e][best[cause[e]]] - score[e][best_blind] for e in score]),
        ("heuristic_minus_never", [score[e]["heuristic"] - score[e]["never"] for e in score]),
        ("oracle_minus_best_cause_blind", [score[e]["oracle"] - score[e][best_blind] for e in score]),
    ):
        m, lo, hi = t_interval(diffs)
        assert answer[key]["mean"] == pytest.approx(m) and answer[key]["ci95"] == pytest.approx([lo, hi])
    assert answer["value_of_knowing_cause"]["mean"] >= 0  # the per-cause best includes the overall best


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategies", "never,always"], "--strategies: unknown ['always']"),
    (["--dataset", "synthetic"], "--dataset synthetic has no held-out test split"),
    (["--germinate-at", "30"], "--germinate-at must be a decision epoch"),
    (["--address", "head:6379"], "--address applies to --engine ray"),
])
def test_bad_input_is_one_line_and_exit_status_2(argv, message):
    code, out, err = esper(["control-check", "--episodes", "1", *argv])
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
