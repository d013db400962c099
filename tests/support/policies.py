"""Settings and independent references for the policy tests (the packs and policies they share are
session fixtures in conftest.py, made through the public command line as a user would)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np

# 17 episodes is the smallest count whose hash splits put 2 episodes each in val and test.
EPISODES = 17
SETTINGS = ["--dataset", "synthetic", "--epochs", "6", "--seed", "0", "--counterfactual", "1",
            "--counterfactual-epochs", "2", "--quiet"]
FAST = ["--max-epochs", "30", "--patience", "10"]  # enough to learn something, quick on 2 cores


# ---- independent references ------------------------------------------------------------------------

def raw_steps(pack: Path) -> duckdb.DuckDBPyConnection:
    """DuckDB over the pack's Parquet files directly (hive `split=` folders), not through the reader."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW steps AS SELECT * FROM read_parquet('{pack}/steps/**/*.parquet', "
                "hive_partitioning = true)")
    return con


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def standardize(raw: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
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


def gru_outputs(state: dict, z: np.ndarray, clip: float = 10.0) -> np.ndarray:
    """The saved GRU policy network over one episode's rows [steps, features], in float64 numpy, from
    the GRU equations (gates r, z, n in PyTorch's weight order), then the output Linear."""
    x = np.clip(np.nan_to_num(z, nan=0.0), -clip, clip)
    layer = 0
    while f"gru.weight_ih_l{layer}" in state:
        w_ih, w_hh = (state[f"gru.weight_{k}_l{layer}"].double().numpy() for k in ("ih", "hh"))
        b_ih, b_hh = (state[f"gru.bias_{k}_l{layer}"].double().numpy() for k in ("ih", "hh"))
        hidden = w_hh.shape[1]
        h, out = np.zeros(hidden), []
        for row in x:
            gi, gh = w_ih @ row + b_ih, w_hh @ h + b_hh
            r = 1 / (1 + np.exp(-(gi[:hidden] + gh[:hidden])))
            u = 1 / (1 + np.exp(-(gi[hidden:2 * hidden] + gh[hidden:2 * hidden])))
            n = np.tanh(gi[2 * hidden:] + r * gh[2 * hidden:])
            h = (1 - u) * n + u * h
            out.append(h)
        x, layer = np.array(out), layer + 1
    return x @ state["head.weight"].double().numpy().T + state["head.bias"].double().numpy()
