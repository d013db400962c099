"""Host and slot semantics: shapes, blending arithmetic, gradient isolation, blueprints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.environment.blueprints import BLUEPRINTS, build_blueprint, group_count
from pipelines.environment.host import HostCNN, SeedSlot
from telemetry.seed_status import SeedStage


class Doubler(nn.Module):
    """A seed with a known output and one parameter, so arithmetic and gradients are checkable."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def host_with_seed(stage: SeedStage, seed: nn.Module | None = None) -> HostCNN:
    torch.manual_seed(0)
    host = HostCNN(in_channels=1, num_classes=10, width=0.25, input_size=8)
    slot = host.slot1
    slot.germinate(seed or build_blueprint("conv", slot.channels), "conv", epoch=0, ramp_epochs=4)
    if stage in (SeedStage.TRAINING, SeedStage.BLENDING):
        slot.advance(1)
    if stage == SeedStage.BLENDING:
        slot.advance(2)
    return host


def test_names_protocol_and_input_shapes():
    host = HostCNN(in_channels=1, num_classes=10, width=0.25, input_size=8)
    names = {n for n, _ in host.named_modules()}
    assert {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc", "slot1"} <= names
    assert host.seed_slots() == {"slot1": None}
    assert host.pools == (True, False, False)  # 8x8 digits keep 4x4 maps at the slot
    assert host(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    cifar = HostCNN()
    assert cifar.pools == (True, True, True) and cifar.slot1.channels == 64
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("alpha_epochs", [1, 2, 3, 4])
def test_blending_arithmetic(alpha_epochs):
    slot = SeedSlot(3)
    slot.germinate(Doubler(), "conv", epoch=0, ramp_epochs=4)
    slot.advance(1)
    slot.advance(2)
    for _ in range(alpha_epochs):
        slot.lifecycle.begin_epoch()
    x = torch.randn(2, 3, 4, 4)
    alpha = alpha_epochs / 4
    assert slot.alpha == pytest.approx(alpha)
    torch.testing.assert_close(slot(x), alpha * (2 * x) + (1 - alpha) * x)


def test_stage_outputs():
    x = torch.randn(2, 3, 4, 4)
    slot = SeedSlot(3)
    torch.testing.assert_close(slot(x), x)  # empty
    slot.germinate(Doubler(), "conv", epoch=0, ramp_epochs=1)
    torch.testing.assert_close(slot(x), x)  # germinated: inert
    slot.advance(1)
    torch.testing.assert_close(slot(x), x)  # training: host path untouched
    slot.advance(2)
    slot.lifecycle.begin_epoch()
    slot.fossilize(3)
    torch.testing.assert_close(slot(x), 2 * x)  # fossilized: part of the host


def test_training_seed_leaves_the_host_forward_unchanged():
    host = host_with_seed(SeedStage.TRAINING)
    plain = HostCNN(in_channels=1, num_classes=10, width=0.25, input_size=8)
    plain.load_state_dict({k: v for k, v in host.state_dict().items() if ".seed." not in k})
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(host(x), plain(x))


def _host_grads(host: HostCNN) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in host.named_parameters()
            if ".seed." not in n}


def test_gradient_isolation_seed_loss_touches_no_host_parameter():
    host = host_with_seed(SeedStage.TRAINING)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    host(x)
    seed_loss = host.isolated_seed_loss(y)
    assert seed_loss is not None and seed_loss.requires_grad
    host_params = host.host_parameters()
    seed_params = list(host.slot1.seed.parameters())
    grads = torch.autograd.grad(seed_loss, host_params + seed_params, allow_unused=True)
    assert all(g is None for g in grads[: len(host_params)])  # not even in the graph
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(host_params):])  # the seed learns


def test_joint_backward_gives_host_exactly_its_own_gradients():
    host = host_with_seed(SeedStage.TRAINING)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    buffers = {n: b.clone() for n, b in host.named_buffers() if ".seed." not in n}
    F.cross_entropy(host(x), y).backward()
    host.isolated_seed_loss(y)  # discard; recomputed below with the host loss
    alone = _host_grads(host)
    host.zero_grad(set_to_none=True)
    for n, b in host.named_buffers():
        if n in buffers:
            b.copy_(buffers[n])
    logits = host(x)
    running = {n: b.clone() for n, b in host.named_buffers() if ".seed." not in n}
    (F.cross_entropy(logits, y) + host.isolated_seed_loss(y)).backward()
    joint = _host_grads(host)
    for name, g in alone.items():
        torch.testing.assert_close(joint[name], g, rtol=0, atol=0)
    for n, b in host.named_buffers():  # the seed's pass through the frozen tail updates no host buffer
        if n in running:
            assert torch.equal(b, running[n]), n
    assert all(p.grad is not None for p in host.slot1.seed.parameters())


def test_no_isolated_loss_outside_training_or_in_eval():
    for stage in (SeedStage.GERMINATED, SeedStage.BLENDING):
        host = host_with_seed(stage)
        host(torch.randn(4, 1, 8, 8))
        assert host.isolated_seed_loss(torch.zeros(4, dtype=torch.long)) is None
    host = host_with_seed(SeedStage.TRAINING).eval()
    host(torch.randn(4, 1, 8, 8))
    assert host.isolated_seed_loss(torch.zeros(4, dtype=torch.long)) is None


def test_blending_trains_host_and_seed_together():
    host = host_with_seed(SeedStage.BLENDING)
    host.slot1.lifecycle.begin_epoch()
    F.cross_entropy(host(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
    assert host.conv1.weight.grad is not None and host.slot1.seed.conv1.weight.grad is not None


@pytest.mark.parametrize("name", [n for n in BLUEPRINTS if n != "norm"])
@pytest.mark.parametrize("channels", [4, 16])
def test_blueprints_map_c_to_c_and_start_as_identity(name, channels):
    torch.manual_seed(0)
    seed = build_blueprint(name, channels)
    x = torch.relu(torch.randn(5, channels, 4, 4))  # slots see post-ReLU activations
    out = seed(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)
    out.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())


@pytest.mark.parametrize("channels", [4, 32])
def test_norm_seed_adds_a_unit_scale_renormalised_copy(channels):
    """`norm` is not the identity at germination: x + GroupNorm(x) (scale 1), so it lifts a collapsed
    activation scale at once; checked against a float64 recomputation of GroupNorm."""
    torch.manual_seed(0)
    seed = build_blueprint("norm", channels)
    x = 1e-3 * torch.relu(torch.randn(5, channels, 4, 4))  # a collapsed scale
    groups = group_count(channels)
    g = x.double().reshape(5, groups, -1)
    normed = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5))
    torch.testing.assert_close(seed(x).double(), x.double() + normed.reshape_as(x), rtol=1e-4, atol=1e-4)
    assert seed(x).std() > 100 * x.std()
    seed(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())


def test_unknown_blueprint_and_group_counts():
    with pytest.raises(ValueError, match="unknown blueprint 'mlp'; available: conv, attention, norm, depthw"):
        build_blueprint("mlp", 8)
    assert [group_count(c) for c in (2, 4, 6, 16, 64)] == [1, 2, 3, 8, 8]
