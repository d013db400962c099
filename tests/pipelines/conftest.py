import contextlib
import io
from pathlib import Path

import pytest
from support.policies import EPISODES, FAST, SETTINGS

from pipelines.cli import main

# ---- packs and policies shared by the policy tests, each built once per session -------------------

def _esper(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # keep a test's captured output its own
        code = main(argv)
    assert code == 0, f"esper {' '.join(argv)} exited {code}"


def _train(pack: Path, out: Path, selection: str, seed: int, extra: list[str]) -> Path:
    _esper(["train", str(pack), "--features", selection, "--target", "heuristic", "--seed", str(seed),
            "--out", str(out), *extra])
    return out


@pytest.fixture(scope="session")
def diagnostic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diag") / "pack"
    _esper(["generate", "--profile", "diagnostic", *SETTINGS, "--episodes", str(EPISODES), "--workers", "2",
            "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def minimal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 6 episodes of the diagnostic pack's run, recording only the minimal profile."""
    out = tmp_path_factory.mktemp("minimal") / "pack"
    _esper(["generate", "--profile", "minimal", *SETTINGS, "--episodes", "6", "--workers", "1", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def policy_minimal(diagnostic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Imitation of the heuristic on the minimal features: it takes several kinds of action."""
    return _train(diagnostic, tmp_path_factory.mktemp("policy") / "minimal-0", "minimal", 0,
                  ["--max-epochs", "60", "--patience", "20"])


@pytest.fixture(scope="session")
def policy_minimal_seed1(diagnostic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(diagnostic, tmp_path_factory.mktemp("policy") / "minimal-1", "minimal", 1, FAST)


@pytest.fixture(scope="session")
def policy_all(diagnostic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(diagnostic, tmp_path_factory.mktemp("policy") / "all-0", "all", 0, ["--max-epochs", "3"])


@pytest.fixture(scope="session")
def driven(policy_minimal: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pack whose episodes the minimal-feature imitation policy drove."""
    out = tmp_path_factory.mktemp("driven") / "pack"
    _esper(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "6", "--seed", "3",
            "--episodes", "4", "--workers", "1", "--quiet", "--policy", str(policy_minimal), "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def policy_advantage(diagnostic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Advantage regression (an MLP) on the minimal features of the branched steps."""
    out = tmp_path_factory.mktemp("policy") / "advantage-0"
    _esper(["train", str(diagnostic), "--features", "minimal", "--target", "advantage", "--out", str(out), *FAST])
    return out


@pytest.fixture(scope="session")
def policy_gru(diagnostic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GRU over the episode's minimal-feature rows, imitating the heuristic."""
    return _train(diagnostic, tmp_path_factory.mktemp("policy") / "gru-0", "minimal", 0,
                  ["--model", "gru", "--max-epochs", "60", "--patience", "20"])


def _drive(policy: Path, out: Path) -> Path:
    _esper(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "6", "--seed", "3",
            "--episodes", "3", "--workers", "1", "--quiet", "--policy", str(policy), "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def driven_advantage(policy_advantage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Episodes the advantage policy drove (one worker: one process plays them one after another)."""
    return _drive(policy_advantage, tmp_path_factory.mktemp("driven-advantage") / "pack")


@pytest.fixture(scope="session")
def driven_gru(policy_gru: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Episodes the GRU policy drove, one after another in one process (its state must start afresh)."""
    return _drive(policy_gru, tmp_path_factory.mktemp("driven-gru") / "pack")


# ---- a pack for the expert's labels and DAgger: every cause, a behaviour policy that often errs ----
EXPERT_SEED, EXPERT_EPISODES = 5, 16  # run seed 5's first 16 episodes draw every cause; 2 val, 1 test


@pytest.fixture(scope="session")
def expert_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Minimal profile, no rollouts; the heuristic explores half the time, so it plants wrong seeds."""
    out = tmp_path_factory.mktemp("expert") / "pack"
    _esper(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "6", "--seed", str(EXPERT_SEED),
            "--counterfactual", "0", "--epsilon", "0.5", "--episodes", str(EXPERT_EPISODES), "--workers", "1",
            "--quiet", "--out", str(out)])
    return out
