"""`esper explain`: the decision brief of one episode, checked against the pack's rows read by DuckDB."""

from __future__ import annotations

import json

import duckdb
import pytest
from support.packs import described_episodes, run_cli, write_pack


def _reference(pack, episode_id: str) -> list[dict]:
    """The episode's steps, read by plain DuckDB from the table folder."""
    con = duckdb.connect()
    rel = con.sql(f"SELECT step, action, counterfactual, red_flags FROM read_parquet('{pack}/steps/**/*.parquet') "
                  f"WHERE episode_id = '{episode_id}' ORDER BY step")
    names = [d[0] for d in rel.description]
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def _branched_episode(pack) -> str:
    return duckdb.sql(f"SELECT min(episode_id) FROM read_parquet('{pack}/steps/**/*.parquet') "
                      "WHERE counterfactual IS NOT NULL AND action IS NOT NULL").fetchall()[0][0]


def test_the_json_brief_holds_every_decision_intervention_and_rollout(described_pack, capsys):
    episode = _branched_episode(described_pack)
    steps = _reference(described_pack, episode)
    code, out, _ = run_cli(capsys, "explain", str(described_pack), episode, "--format", "json")
    brief = json.loads(out)
    assert code == 0 and brief["episode"]["episode_id"] == episode
    assert [s["step"] for s in brief["trajectory"]] == [s["step"] for s in steps]
    assert [s["action"] for s in brief["trajectory"]] == [s["action"] for s in steps]
    assert [i["step"] for i in brief["interventions"]] == [s["step"] for s in steps
                                                           if s["action"] not in (None, "WAIT")]
    rolled = [s for s in steps if s["counterfactual"]]
    assert [c["step"] for c in brief["counterfactuals"]] == [s["step"] for s in rolled]
    first = brief["counterfactuals"][0]
    values = {v["action"]: v["accuracy"] for v in first["values"]}
    assert values == pytest.approx({c["action"]: c["accuracy"] for c in rolled[0]["counterfactual"]})
    assert first["values"][0]["accuracy"] == max(values.values())  # best first
    flagged = {f["flag"]: f["steps"] for f in brief["red_flags"]}
    for flag, where in flagged.items():
        assert where == [s["step"] for s in steps if flag in (s["red_flags"] or [])]


def test_the_text_brief_with_one_step_in_full(described_pack, capsys):
    episode = _branched_episode(described_pack)
    steps = _reference(described_pack, episode)
    k = next(s["step"] for s in steps if s["counterfactual"])
    code, out, _ = run_cli(capsys, "explain", str(described_pack), episode, "--step", str(k))
    assert code == 0 and out.startswith(f"Episode {episode} (index ")
    for heading in ("Decisions", "Interventions (", "Red flags", "Counterfactual rollouts (", f"Step {k} in full"):
        assert heading in out
    decisions = out.split("Decisions\n")[1].split("\n\n")[0].splitlines()
    assert len(decisions) == 1 + len(steps)  # a header and one line per decision
    assert "GERMINATE_CONV" in out.split(f"Step {k} in full")[1] and "val_loss" in out
    assert len(out.splitlines()) < 200  # a few screens


def test_an_episode_by_its_index_and_bad_input(described_pack, capsys):
    code, by_index, _ = run_cli(capsys, "explain", str(described_pack), "3", "--format", "json")
    assert code == 0 and json.loads(by_index)["episode"]["episode_index"] == 3
    code, _, err = run_cli(capsys, "explain", str(described_pack), "ep-missing")
    assert code == 2 and "no episode 'ep-missing'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "explain", str(described_pack), "3", "--step", "99")
    assert code == 2 and "--step 99" in err


def test_a_diverged_episode_is_valid_json_and_reports(tmp_path, capsys):
    """NaN and Inf (a diverged run) cannot be JSON numbers: they become strings, at any depth."""
    episodes = described_episodes(4)
    episode, steps = episodes[0]
    episode["final_accuracy"] = float("nan")
    episode["seed_outcomes"][0]["improvement"] = float("-inf")
    branched = next(s for s in steps if s["counterfactual"])
    branched["counterfactual"][1]["accuracy"] = float("nan")
    write_pack(tmp_path / "p", episodes)
    code, out, _ = run_cli(capsys, "explain", str(tmp_path / "p"), episode["episode_id"], "--format", "json")
    brief = json.loads(out)
    assert code == 0 and brief["episode"]["final_accuracy"] == "nan"
    assert brief["seed_outcomes"][0]["improvement"] == "-inf"
    assert "nan" in [v["accuracy"] for c in brief["counterfactuals"] for v in c["values"]]
    code, _, _ = run_cli(capsys, "report", str(tmp_path / "p"), "--out", str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "report.html").stat().st_size > 10_000
