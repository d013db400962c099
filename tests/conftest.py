import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests compare float results; pin torch's intra-op threads so reductions are repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
