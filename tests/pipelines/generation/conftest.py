import os

import pytest
from support.ray_cluster import LOOPBACK

# Ray reads this once, when first imported, which any test of the session may do (a Ray run that fails):
# set before any test runs, so Ray in this process always takes the loopback address as its own.
os.environ.update(LOOPBACK)


@pytest.fixture(scope="session")
def ray_cluster():
    """One two-node Ray cluster on this machine for every Ray test of the session (skipped without Ray)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'esper-telemetry[ray]'")
    from support.ray_cluster import ray_cluster as start

    with start() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def engine_reference(tmp_path_factory: pytest.TempPathFactory):
    """The engine tests' run, uninterrupted, in this process on one worker: what every engine must write."""
    from support.generation import ARGS, EPISODES, content

    from pipelines.cli import main

    out = tmp_path_factory.mktemp("engine-reference") / "pack"
    assert main(["generate", *ARGS, "--episodes", str(EPISODES), "--workers", "1", "--quiet", "--out", str(out)]) == 0
    steps = content(out)[0]
    assert 0 < steps.column("counterfactual").null_count < steps.num_rows, "no step with rollouts to compare"
    return out
