"""The local process pool: no worker outlives a killed run, whenever it is killed; a killed worker is
replaced and its episode run again; an episode that raises is named, and stops the run or is passed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import active_children
from pathlib import Path

import pytest
from support import REPO
from support.generation import ARGS as REF_ARGS
from support.generation import EPISODES, commit_of, content, differing_columns, ids
from support.processes import children, kill_group, wait_group_gone

from pipelines.cli import main
from pipelines.generation.episode_task import FAULT_ENV

ESPER = [sys.executable, "-m", "pipelines.cli"]
ARGS = ["--profile", "minimal", "--dataset", "synthetic", "--epochs", "3", "--seed", "5", "--counterfactual", "0",
        "--quiet"]


def _start(out: Path, episodes: int, workers: int) -> subprocess.Popen[bytes]:
    """`esper generate` in a session of its own, so every process it starts shares its process group."""
    cmd = [*ESPER, "generate", *ARGS, "--episodes", str(episodes), "--workers", str(workers), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_for(condition, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", ["first-worker-spawned", "all-workers-spawned"])
def test_no_worker_outlives_a_sigkill_of_the_run_at_its_earliest_moments(tmp_path: Path, moment: str) -> None:
    """Only the driver is killed (as the OOM killer or `kill -9 PID` would); its workers and the resource
    tracker must notice and exit, whether they had started their initializer or not."""
    out = tmp_path / "pack"
    proc = _start(out, episodes=6, workers=2)
    try:
        if moment == "first-worker-spawned":  # the resource tracker, then a worker still importing
            _wait_for(lambda: len(children(proc.pid)) >= 2, proc, "a worker was spawned")
        else:  # later kills (mid-run, at random moments) are test_kills.py's
            _wait_for(lambda: len(children(proc.pid)) >= 3, proc, "both workers were spawned")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        survivors = wait_group_gone(proc.pid, timeout=30.0)
        assert not survivors, f"processes of the killed run still alive 30 s later: {survivors}"
    finally:
        kill_group(proc.pid)


def test_a_killed_worker_is_replaced_and_the_pack_holds_exactly_n_episodes(engine_reference: Path,
                                                                          tmp_path: Path) -> None:
    """SIGKILL of a pool worker in the middle of an episode: the pool is rebuilt, the episodes in flight run
    again, and the pack equals the uninterrupted one."""
    out = tmp_path / "pack"
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        for commit in (2,):  # after the second episode: both workers are mid-episode
            while not done.is_set() and commit_of(out) < commit:
                time.sleep(0.02)
            workers = [p.pid for p in active_children()]
            if done.is_set() or not workers:
                return
            time.sleep(0.2)
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert main(["generate", *REF_ARGS, "--episodes", str(EPISODES), "--workers", "2", "--quiet",
                     "--out", str(out)]) == 0
    finally:
        done.set()
        thread.join()
    assert len(killed) == 1
    assert ids(out) == ids(engine_reference)  # exactly N, none twice
    (s1, e1), (s2, e2) = content(out), content(engine_reference)
    assert differing_columns(e1, e2) == [] and differing_columns(s1, s2) == []


def test_an_episode_that_raises_is_named_and_stops_the_run_or_is_passed_with_keep_going(
        engine_reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised in a pool worker, then (--keep-going, --resume) in this process with one worker."""
    out = tmp_path / "pack"
    run = ["generate", *REF_ARGS, "--episodes", str(EPISODES), "--workers", "1", "--quiet", "--out", str(out)]
    monkeypatch.setenv(FAULT_ENV, "raise:1,4")
    assert main([*run, "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("esper: ep-000001 failed: InjectedFault: injected fault in ep-000001"), err
    assert err[-1].startswith("esper: error: ep-000001 failed:") and "stopped" in err[-1] and "--resume" in err[-1]
    assert len(err) == 2 and "ep-000001" not in ids(out) and ids(out) < ids(engine_reference)

    assert main([*run, "--resume", "--keep-going"]) == 1
    err = capsys.readouterr().err
    assert "esper: ep-000004 failed: InjectedFault" in err
    assert f"2 of {EPISODES} episodes failed (ep-000001, ep-000004;" in err and f"{EPISODES - 2} others" in err
    assert ids(out) == [i for i in ids(engine_reference) if i not in ("ep-000001", "ep-000004")]
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0

    monkeypatch.delenv(FAULT_ENV)
    assert main([*run, "--resume"]) == 0
    (s1, e1), (s2, e2) = content(out), content(engine_reference)
    assert differing_columns(e1, e2) == [] and differing_columns(s1, s2) == []
