"""The GRU policy network is causal: its output at step t is a function of rows 0..t only, and
stepping it one decision at a time with its carried state gives the outputs of the whole sequence."""

from __future__ import annotations

import pytest
import torch

from pipelines.policies.networks import MODELS, SequenceNet, build_network, network_parameters


def _net() -> SequenceNet:
    torch.manual_seed(0)
    return SequenceNet(inputs=7, actions=8, hidden=16, layers=2).eval()


def test_the_output_at_a_step_does_not_depend_on_later_rows() -> None:
    net = _net()
    x = torch.randn(3, 9, 7)
    with torch.no_grad():
        full = net(x)
        for t in range(x.shape[1]):
            truncated = net(x[:, :t + 1])
            assert torch.allclose(full[:, t], truncated[:, t], atol=1e-6), t
            later = x.clone()
            later[:, t + 1:] = torch.randn_like(later[:, t + 1:]) * 100
            assert torch.allclose(net(later)[:, t], full[:, t], atol=1e-6), t
        assert not torch.allclose(full[:, -1], net(x[:, 1:])[:, -1], atol=1e-3)  # it does read earlier rows


def test_stepping_with_the_carried_state_equals_the_whole_sequence() -> None:
    net = _net()
    x = torch.randn(6, 7)
    with torch.no_grad():
        full, hidden, stepped = net(x.unsqueeze(0))[0], None, []
        for row in x:
            out, hidden = net.step(row.unsqueeze(0), hidden)
            stepped.append(out[0])
    assert torch.allclose(torch.stack(stepped), full, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_the_parameter_count_is_known_before_the_network_is_built(model: str) -> None:
    net = build_network(model, 11, 8, 12, 3)
    assert sum(p.numel() for p in net.parameters()) == network_parameters(11, 8, 12, 3, model)
