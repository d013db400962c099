"""Packs and policies shared by test_train.py and test_learned_policy.py, each built once per session.

Generating a pack takes tens of seconds, so both modules ask `shared(name, tmp_path_factory)`, which
builds on first use and remembers the path (a session-scoped fixture would be built once per module
that imports it). Every artefact is made through the public command line, as a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

from telemetry.cli import main

# 17 episodes is the smallest count whose hash splits put 2 episodes each in val and test.
EPISODES = 17
SETTINGS = ["--dataset", "synthetic", "--epochs", "6", "--seed", "0", "--counterfactual", "0.5",
            "--counterfactual-epochs", "2", "--quiet"]
FAST = ["--max-epochs", "30", "--patience", "10"]  # enough to learn something, quick on 2 cores

_built: dict[str, Path] = {}


def shared(name: str, factory: pytest.TempPathFactory) -> Path:
    if name not in _built:
        _built[name] = _BUILDERS[name](factory)
    return _built[name]


def _run(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # keep a test's captured output its own
        code = main(argv)
    assert code == 0, f"esper {' '.join(argv)} exited {code}"


def _diagnostic(factory: pytest.TempPathFactory) -> Path:
    out = factory.mktemp("diag") / "pack"
    _run(["generate", "--profile", "diagnostic", *SETTINGS, "--episodes", str(EPISODES), "--workers", "2",
          "--out", str(out)])
    return out


def _minimal(factory: pytest.TempPathFactory) -> Path:
    """The first 6 episodes of the diagnostic pack's run, recording only the minimal profile."""
    out = factory.mktemp("minimal") / "pack"
    _run(["generate", "--profile", "minimal", *SETTINGS, "--episodes", "6", "--workers", "1", "--out", str(out)])
    return out


def _train(selection: str, target: str, seed: int, extra: list[str]) -> Callable[[pytest.TempPathFactory], Path]:
    def build(factory: pytest.TempPathFactory) -> Path:
        out = factory.mktemp("policy") / f"{selection}-{target}-{seed}"
        _run(["train", str(shared("diagnostic", factory)), "--features", selection, "--target", target,
              "--seed", str(seed), "--out", str(out), *extra])
        return out
    return build


def _driven(factory: pytest.TempPathFactory) -> Path:
    """A pack whose episodes the minimal-feature imitation policy drove."""
    out = factory.mktemp("driven") / "pack"
    _run(["generate", "--profile", "minimal", "--dataset", "synthetic", "--epochs", "6", "--seed", "3",
          "--episodes", "4", "--workers", "1", "--quiet", "--policy", str(shared("policy-minimal", factory)),
          "--out", str(out)])
    return out


_BUILDERS: dict[str, Callable[[pytest.TempPathFactory], Path]] = {
    "diagnostic": _diagnostic,
    "minimal": _minimal,
    # imitation of the heuristic on the minimal features: it takes several kinds of action
    "policy-minimal": _train("minimal", "heuristic", 0, ["--max-epochs", "60", "--patience", "20"]),
    "policy-minimal-seed1": _train("minimal", "heuristic", 1, FAST),
    "policy-all": _train("all", "heuristic", 0, ["--max-epochs", "3"]),
    "driven": _driven,
}


# ---- independent references ------------------------------------------------------------------------

def raw_steps(pack: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB over the pack's Parquet files directly (hive `split=` folders), not through the reader."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW steps AS SELECT * FROM read_parquet('{pack}/steps/**/*.parquet', "
                "hive_partitioning = true)")
    return con


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def standardise(raw: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Raw feature values (NaN for null) -> standardised float64, nulls on the mean (0)."""
    z = (raw - centre) / scale
    z[np.isnan(raw)] = 0.0
    return z


def mlp_logits(state: dict, z: np.ndarray, clip: float = 10.0) -> np.ndarray:
    """The saved network in float64 numpy: Linear+ReLU blocks, then the output Linear."""
    x = np.clip(np.nan_to_num(z, nan=0.0), -clip, clip)
    layers = sorted({int(k.split(".")[1]) for k in state}, key=int)
    for i, index in enumerate(layers):
        w = state[f"body.{index}.weight"].double().numpy()
        b = state[f"body.{index}.bias"].double().numpy()
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x
