"""The sharpness probe leaves the model, its modes and the RNGs exactly as it found them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.models import TinyNet
from support.training import CLASSES, SlotNet, batches, snapshot, train, validate
from torch import nn

from telemetry.config import load_config
from telemetry.tracker import DiagnosticTracker

BASE_FEATURES = 27


def test_sharpness_probe_leaves_weights_buffers_grads_modes_and_rng_untouched():
    torch.manual_seed(0)
    model = SlotNet(dropout=0.3)  # in train mode, dropout would draw from the global RNG
    model.slot1.seed = nn.Conv2d(64, 64, 3, padding=1)
    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, tracker, batches(3), opt)
    validate(model, tracker, batches(2, size=6, seed=1))
    model.train()  # batch norm in train mode would update its running statistics
    model.slot1.eval()  # a mixed mode must come back as it was
    opt.zero_grad()
    F.cross_entropy(model(batches(1, seed=2)[0][0]), batches(1, seed=2)[0][1]).backward()
    before = snapshot(model)
    row = tracker.end_step()
    after = snapshot(model)
    assert row["sharpness_mean"] is not None and math.isfinite(row["sharpness_mean"])
    assert row["sharpness_max"] >= row["sharpness_mean"]
    for key in before:
        assert after[key] == before[key], key


def test_sharpness_is_nonnegative_near_a_minimum_and_grows_with_the_perturbation_scale():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, CLASSES))
    x = torch.randn(64, 8)
    y = (x @ torch.randn(8, CLASSES)).argmax(1)  # learnable labels: training reaches a real minimum
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    means, maxes = [], []
    for scale in (0.01, 0.05, 0.2):
        cfg = load_config("minimal", overrides=[
            "loss_landscape.enabled=true", f"loss_landscape.perturbation_scale={scale}",
            "loss_landscape.perturbation_samples=20", "loss_landscape.probe_batch_size=40"])
        tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
        with torch.no_grad(), tracker.validating():
            tracker.val_batch(model(x[:48]), y[:48], inputs=x[:48])
            tracker.val_batch(model(x[48:]), y[48:], inputs=x[48:])  # the probe batch is the first one
        rows = [tracker.end_step() for _ in range(2)]
        with torch.no_grad():
            z = model(x[:40]).double().numpy()
        lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
        probe_loss = float(np.mean(lse - z[np.arange(40), y[:40].numpy()]))
        for row in rows:  # the probe batch stays fixed across steps
            assert row["probe_loss"] == pytest.approx(probe_loss, rel=1e-5, abs=1e-7)
        means.append(np.mean([r["sharpness_mean"] for r in rows]))
        maxes.append(max(r["sharpness_max"] for r in rows))
        assert all(r["sharpness_max"] >= r["sharpness_mean"] for r in rows)
    assert means[0] >= -1e-4
    assert means[0] < means[1] < means[2]
    assert maxes[0] < maxes[1] < maxes[2]


class FailsOnCall(nn.Module):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fc = nn.Linear(8, CLASSES)
        self.bn = nn.BatchNorm1d(CLASSES)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("forward failed")
        return self.bn(self.fc(x))


def test_sharpness_restores_the_model_even_when_a_perturbed_forward_fails():
    torch.manual_seed(2)
    model = FailsOnCall(fail_at=3)  # base loss, first perturbed loss, then a failure mid-perturbation
    cfg = load_config("minimal", overrides=["loss_landscape.enabled=true"])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
    tracker.set_probe_batch(torch.randn(6, 8), torch.randint(0, CLASSES, (6,)))
    model.train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="forward failed"):
        tracker.end_step()
    assert snapshot(model) == before


def test_sharpness_passes_never_reach_the_activation_statistics():
    """end_step may be called inside `validating()`; the perturbed forwards are not validation outputs."""
    rows = []
    for inside in (False, True):
        torch.manual_seed(10)
        model = TinyNet().eval()
        tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
        with torch.no_grad(), tracker.validating():
            for x, y in batches(2, seed=11):
                tracker.val_batch(model(x), y, inputs=x)
            if inside:
                rows.append(tracker.end_step())
        if not inside:
            rows.append(tracker.end_step())
    acts = [k for k in rows[0] if k.startswith("act_")]
    assert acts and [rows[0][k] for k in acts] == [rows[1][k] for k in acts]


def _probe_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy in float64 numpy: an independent reference for the unperturbed probe loss."""
    with torch.no_grad():
        z = model(x).double().numpy()
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    return float(np.mean(lse - z[np.arange(len(z)), y.numpy()]))


def test_sharpness_every_kth_step_measures_then_repeats_and_says_so():
    """every_n_steps=3: steps 1, 4, 7 measure the model as it is then; the steps between repeat the
    last measurement; a branch restored from a state dict carries on the same schedule."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, CLASSES))
    x, y = torch.randn(32, 8), torch.randint(0, CLASSES, (32,))
    cfg = load_config("minimal", overrides=["loss_landscape.enabled=true", "loss_landscape.every_n_steps=3"])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
    tracker.set_probe_batch(x, y)
    specs = {s.name: s for s in tracker.schema.specs}
    assert "once in every 3 decision steps" in specs["sharpness_mean"].description
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rows, expected, saved = [], [], None
    for step in range(7):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()  # the model changes every step, so a repeated value can only be a carried one
        expected.append(_probe_loss(model, x, y) if step % 3 == 0 else expected[-1])
        if step == 4:
            saved = tracker.state_dict()
        rows.append(tracker.end_step())
    assert [r["probe_loss"] for r in rows] == pytest.approx(expected, rel=1e-5)
    assert len({r["probe_loss"] for r in rows}) == 3
    assert rows[1]["sharpness_mean"] == rows[0]["sharpness_mean"] != rows[3]["sharpness_mean"]
    tracker.load_state_dict(saved)
    assert tracker.end_step()["probe_loss"] == rows[4]["probe_loss"]  # step 6 of the branch: a repeat
