"""Capturing and restoring the global random streams, the one part of a run with no `state_dict`.

A counterfactual branch rolls an episode forward under other actions and must then leave the main
episode exactly as if the branch never happened. Model, optimizer and tracker have state dicts;
the global RNGs (torch on every device, numpy's legacy global, Python's `random`) are captured here.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_global_rng() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy's legacy global and Python's `random` states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
