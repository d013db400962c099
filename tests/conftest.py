import pytest
import torch
from hypothesis import settings

# `pytest --hypothesis-profile=long` (the hypothesis plugin's option) runs the fuzz tests at 20 times
# their default size (tests/support/fuzzing.py); README, "Reliability", records the last such run.
settings.register_profile("long", deadline=None, print_blob=True)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests compare float results; pin torch's intra-op threads so reductions are repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
