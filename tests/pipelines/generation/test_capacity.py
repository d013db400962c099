"""Sizes a machine cannot hold: refused before anything is written, or capped with one line saying so."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
from multiprocessing import active_children
from pathlib import Path

from support import REPO

from pipelines.environment.datasets import load_dataset
from pipelines.generation.capacity import capacity, cores
from pipelines.generation.episode import GenerationSpec
from pipelines.generation.generate import MAX_EPISODES, generate
from telemetry import load_config

MEMORY_LIMIT = 4 * 2**30  # address space for the run under test: plenty for a run, not for a list of 10^12


def test_an_episode_count_no_pack_can_hold_is_refused_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    """Under a memory limit, so that a run which tried (building a list of every index) fails fast instead of
    eating the machine's memory."""
    out = tmp_path / "pack"
    cmd = [sys.executable, "-m", "pipelines.cli", "generate", "--profile", "minimal", "--dataset", "synthetic",
           "--epochs", "3", "--episodes", "1000000000000", "--quiet", "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)))
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip() == (f"esper: error: --episodes 1000000000000: expected at most {MAX_EPISODES:,} per "
                                  "pack (its writer holds every episode id in memory); split the run into several "
                                  "packs")
    assert not out.exists()


def test_workers_are_capped_at_what_the_machine_holds_and_the_run_says_so(tmp_path: Path) -> None:
    """`--workers 10000` on 4 episodes: never more worker processes than cores, and one line saying why."""
    spec = GenerationSpec(load_config("minimal"), dataset="synthetic", epochs=3, counterfactual_fraction=0.0)
    dataset = load_dataset("synthetic")
    held = capacity(sum(t.numel() * t.element_size() for t in (dataset.x_train, dataset.y_train, dataset.x_val,
                                                                dataset.y_val))).workers
    notes: list[str] = []
    most = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, len(active_children()))
            done.wait(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        generate(spec, tmp_path / "pack", 4, workers=10_000, show_progress=False, say=notes.append)
    finally:
        done.set()
        thread.join()
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"--workers 10000: this machine holds {held} ({cores()} CPU cores")
    assert notes[0].endswith(f"running {held}")
    assert 1 <= most <= min(held, 4)
