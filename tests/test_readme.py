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
