"""The README's tracker example is the first thing a user copies: it must run as written."""

from __future__ import annotations

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tracker_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "DiagnosticTracker" in b)
    assert len(example.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    row, tracker = namespace["row"], namespace["tracker"]
    assert list(row) == tracker.schema.names and len(row) > 27
    assert row["epoch"] == 2 and 0.0 <= row["grad_health"] <= 1.0 and math.isfinite(row["val_acc_class_std"])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in namespace["model"].modules())


def test_readme_probe_example_adds_its_feature() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tracker_example = next(b for b in blocks if "DiagnosticTracker(model" in b and "end_step" in b)
    probe_example = next(b for b in blocks if "class LossPeak(Probe)" in b)
    assert len(probe_example.strip().splitlines()) <= 14
    namespace: dict = {}
    exec(compile(tracker_example, "README.md", "exec"), namespace)
    exec(compile(probe_example, "README.md", "exec"), namespace)
    tracker, model = namespace["tracker"], namespace["model"]
    assert tracker.schema.names[-1] == "loss_peak"
    x, y = namespace["x"], namespace["y"]
    losses = []
    for xb, yb in zip(x.split(64), y.split(64), strict=True):
        logits = model(xb)
        loss = namespace["F"].cross_entropy(logits, yb)
        loss.backward()
        losses.append(float(loss.detach()))
        tracker.train_batch(loss, logits, yb)
        model.zero_grad()
    assert tracker.end_step()["loss_peak"] == max(losses)
    tracker.close()
