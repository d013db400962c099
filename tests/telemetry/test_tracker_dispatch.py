"""Operators per tracked batch, counted (never timed): few, and not growing with the layer count.

On a GPU every operator of the batch path is a kernel launch of 5-10 us (views: a dispatch), so
the count is the tracker's per-batch cost on a small host. The budget (diagnostic and research at
most 25 per tracked batch on a 4-layer MLP, at most 4 more at 25 layers) holds over a step of 20
batches, which covers both phases of the gradient pool (batches 1-16 fill it, later ones replace
positions), and no operator of the batch path waits for the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.nn.functional as F
from support.dispatch import OpMonitor, forbid_host_sync
from support.models import DeepMLP

from telemetry import DiagnosticTracker, load_config

BUDGET = {"minimal": 6, "standard": 25, "diagnostic": 25, "research": 25}
GROWTH = 4  # from 4 to 25 layers
BATCHES = 20


def config(profile: str, depth: int, *extra: str):
    # the standard profile names the reference host's layers; here: first, second and last
    layers = [f"gradients.layers=[fc0,fc1,fc{depth - 1}]"] if profile == "standard" else []
    return load_config(profile, overrides=[*layers, *extra])


def ops_per_batch(profile: str, depth: int, *extra: str, guard=None, device: str = "cpu",
                  guard_from: int = 0) -> list[int]:
    """Operators dispatched by each `train_batch` call of a 20-batch step (after a warm-up step);
    `guard` wraps every call from step `guard_from` on."""
    torch.manual_seed(depth)
    model = DeepMLP(depth).to(device)
    tracker = DiagnosticTracker(model, config(profile, depth, *extra), num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 48, generator=g).to(device), torch.randint(0, 10, (16,), generator=g).to(device))
            for _ in range(BATCHES)]
    counts = []
    for step in range(2):
        for x, y in data:
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            monitor = OpMonitor()
            with monitor, (guard() if guard and step >= guard_from else nullcontext()):
                tracker.train_batch(loss, logits, y)
            if step:
                counts.append(monitor.count)
            opt.step()
        with torch.no_grad(), tracker.validating():
            tracker.val_batch(model(data[0][0]), data[0][1], inputs=data[0][0])
        row = tracker.end_step()
    assert row["train_loss"] is not None
    tracker.close()
    return counts


@pytest.mark.parametrize("profile", list(BUDGET))
def test_ops_per_tracked_batch_stay_within_budget_and_do_not_grow_with_depth(profile):
    shallow, deep = ops_per_batch(profile, 4), ops_per_batch(profile, 25)
    assert max(shallow) <= BUDGET[profile], (profile, shallow)
    assert max(deep) - max(shallow) <= GROWTH, (profile, shallow, deep)
    assert max(deep) <= BUDGET[profile] + GROWTH


def test_the_exact_path_is_the_one_that_grows():
    """The count is sensitive: the exact path's per-gradient work shows up at 25 layers."""
    shallow = ops_per_batch("diagnostic", 4, "gradients.exact=true")
    deep = ops_per_batch("diagnostic", 25, "gradients.exact=true")
    assert max(deep) - max(shallow) > 20


@pytest.mark.parametrize("profile", ["standard", "diagnostic", "research"])
def test_no_operator_of_the_batch_path_waits_for_the_device(profile):
    ops_per_batch(profile, 25, guard=forbid_host_sync)


@contextmanager
def cuda_sync_is_an_error() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("profile", ["standard", "diagnostic", "research"])
def test_cuda_tracked_batches_never_synchronise(profile):
    """On the device itself: CUDA raises on any synchronising call inside a tracked batch. The first
    step builds each gradient pattern's layout once (a host-to-device copy), so it runs unguarded."""
    counts = ops_per_batch(profile, 25, device="cuda", guard=cuda_sync_is_an_error, guard_from=1)
    assert max(counts) <= BUDGET[profile] + GROWTH
