"""`esper generate`: determinism whatever the worker count, resume after SIGKILL, one writer per pack,
counterfactual branches that leave the episode unchanged, and bad input refused before any write."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from support import REPO

from pipelines.cli import main
from pipelines.environment.datasets import load_dataset
from pipelines.generation.episode import GenerationSpec, run_episode
from pipelines.generation.generate import _one_thread
from telemetry.config import load_config
from telemetry.packs.reader import open_pack
from telemetry.packs.writer import PackWriter

ROOT = REPO
ESPER = [sys.executable, "-m", "pipelines.cli"]
# Small and fast, but every part is on: exploration, counterfactual branches, a mixed scenario set.
ARGS = ["--profile", "diagnostic", "--dataset", "synthetic", "--epochs", "6", "--seed", "7",
        "--counterfactual", "0.5", "--quiet"]
EPISODES = 6


def spec(**kw) -> GenerationSpec:
    base = dict(config=load_config("diagnostic"), dataset="synthetic", rng_seed=7, epochs=6,
                counterfactual_fraction=0.5)
    return GenerationSpec(**{**base, **kw})


def sorted_table(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def content(pack: Path) -> tuple[pa.Table, pa.Table]:
    """Both tables in a canonical order, so packs written in different orders compare equal."""
    p = open_pack(pack)
    return sorted_table(p.steps(), ["episode_id", "step"]), sorted_table(p.episodes(), ["episode_id"])


@pytest.fixture(scope="module")
def reference_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "ref"
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--workers", "1"]) == 0
    return out


def test_pack_content_does_not_depend_on_the_number_of_workers(reference_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "w2"
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--workers", "2"]) == 0
    (s1, e1), (s2, e2) = content(reference_pack), content(out)
    assert s1.num_rows == s2.num_rows > 0 and e1.num_rows == e2.num_rows == EPISODES
    assert s1.equals(s2) and e1.equals(e2)


def test_pack_holds_every_episode_once_with_decisions_and_validates(reference_pack: Path) -> None:
    steps, episodes = content(reference_pack)
    assert episodes.column("episode_index").to_pylist() == list(range(EPISODES))
    assert steps.num_rows == EPISODES * 5  # epochs - 1 decisions per episode
    for column in ("action", "behaviour_prob", "action_mask", "reward", "narrative", "why_this_action",
                   "hindsight_accuracy", "hindsight_epochs", "was_good_decision"):
        assert steps.column(column).null_count == 0, column
    assert steps.column("counterfactual").null_count < steps.num_rows  # some steps were branched
    assert subprocess.run([*ESPER, "validate", str(reference_pack)], capture_output=True).returncode == 0


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_pack(reference_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([*ESPER, "generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "manifest.json").exists() and open_pack(out).manifest.quick_stats.episodes >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # A kill at any instant, inside a commit included, leaves a sound pack (an unpublished version folder at most)
    checked = subprocess.run([*ESPER, "validate", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    committed = open_pack(out).manifest.quick_stats.episodes
    assert 2 <= committed < EPISODES
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--resume"]) == 0
    (s1, e1), (s2, e2) = content(reference_pack), content(out)
    assert e2.column("episode_id").to_pylist() == e1.column("episode_id").to_pylist()
    assert s1.equals(s2) and e1.equals(e2)


def test_resume_of_a_complete_pack_adds_nothing(reference_pack: Path, tmp_path: Path, capsys) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference_pack, out)
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(out), "--resume"]) == 0
    assert "0 generated" in capsys.readouterr().out
    assert content(out)[0].equals(content(reference_pack)[0])


def test_a_second_writer_on_the_same_pack_is_refused(reference_pack: Path, tmp_path: Path, capsys) -> None:
    import shutil

    out = tmp_path / "busy"
    shutil.copytree(reference_pack, out)
    manifest = open_pack(out).manifest
    holder = PackWriter.open_append(out, manifest.telemetry_config, _schema())
    try:
        code = main(["generate", *ARGS, "--episodes", str(EPISODES + 1), "--out", str(out), "--resume"])
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert code == 2 and "another writer holds the pack" in err and len(err.strip().splitlines()) == 1


def _schema():
    from pipelines.generation.generate import reference_host
    from telemetry.feature_schema import build_feature_schema

    ds = load_dataset("synthetic")
    return build_feature_schema(load_config("diagnostic"), reference_host(ds, spec()), ds.num_classes)


@pytest.mark.parametrize("change, name", [(["--epochs", "7"], "epochs"), (["--seed", "8"], "rng_seed"),
                                          (["--counterfactual", "0.2"], "counterfactual_fraction")])
def test_resume_with_other_settings_is_refused(reference_pack: Path, tmp_path: Path, capsys, change, name) -> None:
    import shutil

    out = tmp_path / "other"
    shutil.copytree(reference_pack, out)
    before = sorted(p.name for p in out.rglob("*"))
    args = [a for a in ARGS]
    flag = change[0]
    args[args.index(flag) + 1] = change[1]
    assert main(["generate", *args, "--episodes", str(EPISODES + 2), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"generated with {name}=" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == before


def test_counterfactual_branches_leave_the_episode_unchanged() -> None:
    ds = load_dataset("synthetic")
    with _one_thread():
        plain = run_episode(spec(counterfactual_fraction=0.0), 3, ds)
        branched = run_episode(spec(counterfactual_fraction=1.0), 3, ds)
    decision_only = {"counterfactual", "counterfactual_epochs", "best_action", "best_actions",
                     "counterfactual_stratum", "was_good_decision"}
    strata = [b["counterfactual_stratum"] for b in branched.steps if b["counterfactual"] is not None]
    assert "dormant" in strata and len(strata) == len(set(strata))  # every stratum met, each once
    for a, b in zip(plain.steps, branched.steps, strict=True):
        assert all(_same(v, b[k]) for k, v in a.items() if k not in decision_only)
    assert plain.episode == branched.episode


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_behaviour_probability_matches_epsilon_greedy(reference_pack: Path) -> None:
    steps = content(reference_pack)[0]
    eps = 0.1
    for row in steps.select(["action", "action_mask", "behaviour_prob"]).to_pylist():
        n = sum(row["action_mask"])
        assert row["action_mask"][_ACTIONS.index(row["action"])]
        assert min(abs(row["behaviour_prob"] - p) for p in (1 - eps + eps / n, eps / n)) < 1e-6


_ACTIONS = ["WAIT", "GERMINATE_CONV", "GERMINATE_ATTENTION", "GERMINATE_NORM", "GERMINATE_DEPTHWISE",
            "ADVANCE", "FOSSILIZE", "CULL"]


def test_red_flags_are_present_exactly_when_duckdb_sees_the_threshold_crossed(reference_pack: Path) -> None:
    con = open_pack(reference_pack).duckdb()
    checks = {
        "overfitting": "val_loss - train_loss > 0.5",
        "poor_gradient_health": "grad_health < 0.5",
        "sharp_minimum": "sharpness_mean > 0.1",
        "severe_class_imbalance": "val_acc_class_std > 15.0",
        "sustained_plateau": " AND ".join(f"abs(val_loss_lag{k} - val_loss_lag{k + 1}) < 0.005" for k in range(3)),
    }
    for flag, condition in checks.items():
        mismatched = con.execute(
            f"SELECT count(*) FROM steps WHERE coalesce({condition}, false) <> list_contains(red_flags, '{flag}')"
        ).fetchone()[0]
        assert mismatched == 0, flag
    assert con.execute("SELECT count(*) FROM steps WHERE len(red_flags) > 0").fetchone()[0] > 0


def test_hindsight_accuracy_is_the_accuracy_k_epochs_later(reference_pack: Path) -> None:
    con = open_pack(reference_pack).duckdb()
    bad = con.execute("""
        SELECT count(*) FROM steps s
        LEFT JOIN steps later ON later.episode_id = s.episode_id AND later.step = s.step + s.hindsight_epochs
        JOIN episodes e ON e.episode_id = s.episode_id
        WHERE s.hindsight_accuracy <> coalesce(later.val_accuracy, e.final_accuracy)
    """).fetchone()[0]
    assert bad == 0


def test_episode_summary_agrees_with_the_steps(reference_pack: Path) -> None:
    steps, episodes = content(reference_pack)
    for ep in episodes.to_pylist():
        actions = pc.filter(steps.column("action"), pc.equal(steps.column("episode_id"), ep["episode_id"]))
        germinated = [a for a in actions.to_pylist() if a.startswith("GERMINATE_")]
        assert len(ep["seed_outcomes"]) == len(germinated)
        assert [s["blueprint"] for s in ep["seed_outcomes"]] == [a.removeprefix("GERMINATE_").lower()
                                                                 for a in germinated]
        events = [m["event"] for m in ep["key_moments"]]
        assert ep["trajectory"] == (" -> ".join(events) or "steady")
        assert events.count("fossilize") == actions.to_pylist().count("FOSSILIZE")
        assert ep["scenario"] in ("healthy", "lr_too_low", "lr_too_high", "vanishing_gradients", "dead_units",
                                  "overfitting")


def test_the_scenario_never_reaches_the_features(reference_pack: Path) -> None:
    names = open_pack(reference_pack).feature_names()
    assert not [n for n in names if "scenario" in n or "label_noise" in n or "init_scale" in n]


@pytest.mark.parametrize("args, message", [
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--episodes", "2", "--workers", "0"], "--workers must be >= 1"),
    (["--episodes", "2", "--epochs", "1"], "--epochs must be >= 2"),
    (["--episodes", "2", "--counterfactual", "1.5"], "--counterfactual must be in [0, 1]"),
    (["--episodes", "2", "--scenarios", "healthy,bogus"], "'bogus' is not a scenario"),
    (["--episodes", "2", "--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar"),
    (["--episodes", "2", "--profile", "huge"], "unknown profile 'huge'"),
    (["--episodes", "2", "--set", "gradients.layers=[conv9]"], "conv9"),
    (["--episodes", "2", "--device", "tpu"], "--device must be cpu or cuda"),
    (["--episodes", "two"], "invalid int value"),
])
def test_bad_generate_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "pack"
    base = ["generate", "--out", str(out), "--dataset", "synthetic", "--epochs", "3", "--quiet"]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message.lower() in err.lower() and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_existing_pack_is_not_overwritten_without_resume(reference_pack: Path, capsys) -> None:
    before = (reference_pack / "manifest.json").read_bytes()
    assert main(["generate", *ARGS, "--episodes", "2", "--out", str(reference_pack)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (reference_pack / "manifest.json").read_bytes() == before


def test_a_pack_whose_current_link_was_removed_is_repaired_never_recreated(reference_pack: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`cp -a PACK x; rm x/current; esper generate --profile minimal ... --resume` once took the pack for an
    interrupted create and deleted its committed episodes. Now the link is repaired and the other
    settings refused; with the pack's settings the resume completes it as usual."""
    copy = Path(shutil.copytree(reference_pack, tmp_path / "x", symlinks=True))
    kept = sorted(str(p.relative_to(copy)) for p in (copy / ".versions").rglob("*"))
    (copy / "current").unlink()
    other = ["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--episodes", "2",
             "--quiet", "--resume", "--out", str(copy)]
    assert main(other) == 2
    assert "--resume: the pack was generated with" in capsys.readouterr().err
    assert sorted(str(p.relative_to(copy)) for p in (copy / ".versions").rglob("*")) == kept
    assert all(a.equals(b) for a, b in zip(content(copy), content(reference_pack), strict=True))
    (copy / "current").unlink()
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--out", str(copy), "--resume"]) == 0
    assert all(a.equals(b) for a, b in zip(content(copy), content(reference_pack), strict=True))


def test_a_create_that_loses_a_race_names_the_command_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Another run creates the pack between the check and the create: the CLI says what to do, not
    which library call to make."""
    out, create = tmp_path / "out", PackWriter.create

    def racing(path, *args, **kwargs):
        other = create(path, *args, **kwargs)  # the other run wins
        other.close()
        return create(path, *args, **kwargs)

    monkeypatch.setattr(PackWriter, "create", racing)
    assert main(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--episodes", "2",
                 "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another run created a pack there meanwhile; pass --resume" in err, err
    assert "open_append" not in err
