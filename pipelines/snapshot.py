"""Capturing and restoring the state that has no `state_dict`: RNG streams and the tracker's history.

A counterfactual branch rolls an episode forward under other actions and must then leave the main
episode exactly as if the branch never happened. Model and optimizer have state dicts; the global
RNGs have their own getters; the tracker keeps its run history (previous losses, bests, plateau
count, sampling generators, the fixed probe batch) in its probes' attributes.

The tracker's state is copied generically: every probe's attributes (and the tracker's own) are
deep-copied with a memo that maps the model, its parameters and buffers, the config, the probes
themselves and hook handles to themselves. The copy thus holds values only, and restoring it puts
values back into the same probe objects, whose references to the live model stay intact.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from telemetry.tracker import DiagnosticTracker

_TRACKER_SHARED_ATTRS = ("model", "config", "probes", "schema")


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


def _shared_memo(tracker: DiagnosticTracker) -> dict[int, Any]:
    """Objects a tracker snapshot must reference, never copy."""
    shared: list[Any] = [tracker, tracker.model, tracker.config, *tracker.probes]
    shared += list(tracker.model.modules()) + list(tracker.model.parameters()) + list(tracker.model.buffers())
    for probe in tracker.probes:
        for value in vars(probe).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            shared += [v for v in items if isinstance(v, RemovableHandle)]
        ctx = getattr(probe, "ctx", None)
        if ctx is not None:
            shared.append(ctx)
    return {id(obj): obj for obj in shared}


def _tracker_attrs(tracker: DiagnosticTracker) -> dict[str, Any]:
    return {k: v for k, v in vars(tracker).items() if k not in _TRACKER_SHARED_ATTRS}


def capture_tracker(tracker: DiagnosticTracker) -> dict[str, Any]:
    """A value copy of the tracker's history and every probe's state."""
    memo = _shared_memo(tracker)
    state = {"tracker": _tracker_attrs(tracker), "probes": [vars(p) for p in tracker.probes]}
    return copy.deepcopy(state, memo)


def restore_tracker(tracker: DiagnosticTracker, state: dict[str, Any]) -> None:
    """Put a captured state back into the same tracker and probe objects (the state stays reusable)."""
    fresh = copy.deepcopy(state, _shared_memo(tracker))
    vars(tracker).update(fresh["tracker"])
    for probe, attrs in zip(tracker.probes, fresh["probes"], strict=True):
        vars(probe).clear()
        vars(probe).update(attrs)
