"""The tracker never synchronises with the host inside a batch: one device-to-host transfer per step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from support.training import CLASSES, SlotNet, batches, nothing, train, validate
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from telemetry.config import load_config
from telemetry.tracker import DiagnosticTracker

BASE_FEATURES = 27


# Operators that make the host wait for the device on CUDA: a Python scalar read, or an output shape
# that depends on tensor values.
SYNCING_OPS = {
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::nonzero", "aten::masked_select", "aten::bincount", "aten::unique_consecutive", "aten::_unique",
    "aten::_unique2", "aten::unique_dim", "aten::histc",
}
HOST_METHODS = ("item", "tolist", "cpu", "numpy", "__array__", "__bool__", "__float__", "__int__",
                "__index__")


class OpMonitor(TorchDispatchMode):
    """Records operators that synchronise on CUDA, and copies from a device to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.device_to_host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in SYNCING_OPS:
            self.syncs.append(name)
        elif name == "aten::segment_reduce" and not kwargs.get("unsafe", False):
            self.syncs.append("segment_reduce(unsafe=False) checks its lengths with .item()")
        elif name in ("aten::index", "aten::index_put", "aten::index_put_"):
            indices = args[1] if len(args) > 1 else []
            if any(t is not None and t.dtype == torch.bool for t in indices):
                self.syncs.append(f"{name} with a boolean mask")
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
            self.syncs.append(name)
        out = func(*args, **kwargs)
        if name == "aten::_to_copy" and args[0].device.type != "cpu" and out.device.type == "cpu":
            self.device_to_host += 1
        if name == "aten::copy_" and args[0].device.type == "cpu" and args[1].device.type != "cpu":
            self.device_to_host += 1
        return out


@contextmanager
def patched_host_methods(on_call) -> Iterator[None]:
    saved = {name: vars(torch.Tensor).get(name) for name in HOST_METHODS}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}

    def make(name):
        def method(self, *args, **kwargs):
            on_call(name)
            return originals[name](self, *args, **kwargs)
        return method

    for name in HOST_METHODS:
        setattr(torch.Tensor, name, make(name))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)


@contextmanager
def forbid_host_sync() -> Iterator[None]:
    def refuse(name):
        raise AssertionError(f"host synchronisation inside a batch: Tensor.{name}")

    monitor = OpMonitor()
    with patched_host_methods(refuse), monitor:
        yield
    assert not monitor.syncs, monitor.syncs


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
