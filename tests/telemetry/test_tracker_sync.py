"""The tracker never synchronises with the host inside a batch: one device-to-host transfer per step."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from support.dispatch import OpMonitor, forbid_host_sync, patched_host_methods
from support.training import CLASSES, SlotNet, batches, nothing, train, validate
from torch import nn

from telemetry.config import load_config
from telemetry.tracker import DiagnosticTracker

BASE_FEATURES = 27


def sync_free_run(model: nn.Module, device: str, wrap, steps: int = 2) -> list[dict[str, object]]:
    cfg = load_config("research", overrides=["gradients.sample_size=1024"])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = []
    for step in range(steps):
        data = [(x.to(device), y.to(device)) for x, y in batches(18, seed=step)]  # > 16: reservoir path
        train(model, tracker, data, opt, wrap=wrap(step))
        val = [(x.to(device), y.to(device)) for x, y in batches(2, seed=9)]
        validate(model, tracker, val, wrap=wrap(step))
        rows.append(tracker.end_step())
    tracker.close()
    return rows


def test_train_and_val_batches_never_synchronise_with_the_host():
    torch.manual_seed(7)
    model = SlotNet()
    model.slot1.seed = nn.Conv2d(64, 64, 3, padding=1)
    rows = sync_free_run(model, "cpu", lambda step: forbid_host_sync)
    assert rows[-1]["seed_slot1_grad_norm"] is not None and rows[-1]["grad_p50_conv"] is not None


def test_the_monitor_catches_what_it_claims_to():
    with pytest.raises(AssertionError, match="Tensor.item"), forbid_host_sync():
        torch.ones(1).item()
    with pytest.raises(AssertionError, match="bincount"), forbid_host_sync():
        torch.bincount(torch.tensor([0, 1, 1]))
    with pytest.raises(AssertionError, match="segment_reduce"), forbid_host_sync():
        torch.segment_reduce(torch.ones(3), "sum", lengths=torch.tensor([1, 2]))
    with pytest.raises(AssertionError, match="boolean mask"), forbid_host_sync():
        x = torch.ones(3)
        _ = x[x > 0]


def test_end_step_makes_exactly_one_host_transfer():
    torch.manual_seed(8)
    model = SlotNet()
    model.slot1.seed = nn.Conv2d(64, 64, 3, padding=1)
    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    train(model, tracker, batches(3), torch.optim.SGD(model.parameters(), lr=0.05))
    validate(model, tracker, batches(2))
    calls: list[str] = []
    monitor = OpMonitor()
    with patched_host_methods(calls.append), monitor:
        row = tracker.end_step()
    assert calls == ["numpy"]
    assert not monitor.syncs, monitor.syncs
    assert row["sharpness_mean"] is not None


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_batches_do_not_synchronise_and_end_step_copies_once():
    torch.manual_seed(9)
    model = SlotNet()
    model.slot1.seed = nn.Conv2d(64, 64, 3, padding=1)
    model.cuda()

    @contextmanager
    def strict():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    # the first step builds cached device layouts (one host-to-device copy each); later steps must be clean
    rows = sync_free_run(model, "cuda", lambda step: strict if step else nothing, steps=3)
    assert rows[-1]["grad_p50_conv"] is not None

    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    data = [(x.cuda(), y.cuda()) for x, y in batches(3)]
    train(model, tracker, data, torch.optim.SGD(model.parameters(), lr=0.05))
    validate(model, tracker, data[:1])
    monitor = OpMonitor()
    with monitor:
        tracker.end_step()
    assert monitor.device_to_host == 1
    assert not monitor.syncs, monitor.syncs
