"""How the tracker behaves around a training run: it leaves the model, the RNG and the run alone,
removes its hooks, follows seeds added mid-run, survives NaN/Inf, is deterministic, and never
synchronises with the host inside a batch (one device-to-host transfer per decision step)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_tracker_stats import TinyNet
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.host import HostCNN
from telemetry.config import load_config
from telemetry.tracker import DiagnosticTracker

CLASSES = 5
BASE_FEATURES = 27


class Slot(nn.Module):
    """A seed slot: identity while empty, `x + seed(x)` once a seed is planted."""

    def __init__(self) -> None:
        super().__init__()
        self.seed: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.seed is None else x + self.seed(x)


class SlotNet(nn.Module):
    """A small host with two 64-channel seed slots, dropout and batch norm; speaks `seed_slots()`."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.slot0 = Slot()
        self.slot1 = Slot()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.slot1(self.slot0(F.relu(self.bn(self.conv(x)))))
        return self.fc(self.drop(F.adaptive_avg_pool2d(x, 1).flatten(1)))

    def seed_slots(self) -> dict[str, nn.Module | None]:
        return {"slot0": self.slot0.seed, "slot1": self.slot1.seed}


def batches(n: int, size: int = 4, seed: int = 0, side: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, side, side, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
            for _ in range(n)]


def train(model, tracker, data, opt, wrap=None) -> None:
    model.train()
    for x, y in data:
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        with wrap() if wrap else _nothing():
            tracker.train_batch(loss, logits, y)
        opt.step()


def validate(model, tracker, data, wrap=None) -> None:
    model.eval()
    with torch.no_grad(), tracker.validating():
        for x, y in data:
            with wrap() if wrap else _nothing():
                tracker.val_batch(model(x), y, inputs=x)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def bits(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: bits(v) for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: None if p.grad is None else bits(p.grad) for k, p in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "torch_rng": bits(torch.get_rng_state()),
        "python_rng": random.getstate(),
        "numpy_rng": repr(np.random.get_state()),
    }


# ---- the sharpness probe ---------------------------------------------------------------------

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


# ---- hooks ---------------------------------------------------------------------------------------

def hook_count(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        total += sum(len(v) for k, v in vars(m).items() if "hook" in k and isinstance(v, dict))
    for p in model.parameters():
        total += len(p._backward_hooks or {})
        total += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    glob = torch.nn.modules.module
    total += sum(len(v) for k, v in vars(glob).items() if k.startswith("_global") and "hook" in k
                 and isinstance(v, dict))
    return total


@pytest.mark.parametrize("profile", ["minimal", "standard", "diagnostic", "research"])
def test_close_removes_every_hook_the_tracker_added(profile):
    model = HostCNN(width=0.25, num_classes=CLASSES)
    before = hook_count(model)
    forward_hooks = sum(len(m._forward_hooks) for m in model.modules())
    tracker = DiagnosticTracker(model, load_config(profile), num_classes=CLASSES)
    if profile == "research":  # activation statistics: one forward hook per tracked layer
        layers = sum(n.startswith("act_mean_") for n in tracker.schema.names)
        assert layers >= 7 and sum(len(m._forward_hooks) for m in model.modules()) == forward_hooks + layers
    train(model, tracker, batches(2, side=8), torch.optim.SGD(model.parameters(), lr=0.01))
    validate(model, tracker, batches(1, side=8))
    tracker.end_step()
    tracker.close()
    assert hook_count(model) == before
    assert sum(len(m._forward_hooks) for m in model.modules()) == forward_hooks
    tracker.close()  # idempotent
    with DiagnosticTracker(model, load_config(profile), num_classes=CLASSES):
        pass
    assert hook_count(model) == before


# ---- seeds added during the run ------------------------------------------------------------------

def seed_grad_norm(seed: nn.Module) -> float:
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in seed.parameters()))


def test_a_seed_added_mid_run_is_tracked_without_changing_the_schema():
    torch.manual_seed(3)
    model = SlotNet()
    tracker = DiagnosticTracker(model, load_config("research"), num_classes=CLASSES)
    names = list(tracker.schema.names)
    assert not [n for n in names if n.startswith(("grad_", "weight_norm_", "act_")) and "slot" in n]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = batches(8, seed=3)

    train(model, tracker, data[:2], opt)
    row = tracker.end_step()
    for slot in ("slot0", "slot1"):
        assert row[f"seed_{slot}_grad_norm"] is None and row[f"seed_{slot}_weight_norm"] is None
        assert row[f"seed_{slot}_param_count"] == 0
    assert row["available_slots"] == 2

    train(model, tracker, data[2:4], opt)  # the step's first batches run without the seed
    seed = nn.Conv2d(64, 64, 3, padding=1)
    model.slot1.seed = seed
    opt.add_param_group({"params": list(seed.parameters())})
    norms = []
    for x, y in data[4:7]:
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        norms.append(seed_grad_norm(seed))
        tracker.train_batch(loss, logits, y)
        opt.step()
    validate(model, tracker, data[7:])
    row = tracker.end_step()
    assert list(row) == names and list(tracker.schema.names) == names
    assert row["seed_slot1_grad_norm"] == pytest.approx(np.mean(norms), rel=1e-5)
    weights = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in seed.parameters()))
    assert row["seed_slot1_weight_norm"] == pytest.approx(weights, rel=1e-6)
    assert row["seed_slot1_param_count"] == 64 * 64 * 9 + 64
    assert row["seed_slot0_grad_norm"] is None and row["seed_slot0_weight_norm"] is None
    assert row["seed_slot0_param_count"] == 0
    assert row["available_slots"] == 1

    model.slot1.seed = None  # culled: the slot reports empty again
    train(model, tracker, data[:1], opt)
    row = tracker.end_step()
    assert row["seed_slot1_grad_norm"] is None and row["seed_slot1_param_count"] == 0
    assert row["available_slots"] == 2


def test_a_seed_planted_in_the_reference_host_reports_into_the_fixed_seed_group():
    model = HostCNN(num_classes=CLASSES)
    tracker = DiagnosticTracker(model, load_config("standard", overrides=["track_weight_norms=true"]),
                                num_classes=CLASSES)
    names = list(tracker.schema.names)
    validate(model, tracker, batches(1, side=8))
    row = tracker.end_step()
    assert row["seed_slot1_weight_norm"] is None and row["seed_slot1_param_count"] == 0
    assert row["available_slots"] == 1
    seed = nn.Conv2d(64, 64, 3, padding=1)
    model.slot1.seed = seed
    validate(model, tracker, batches(1, side=8))
    row = tracker.end_step()
    assert list(row) == names
    weights = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in seed.parameters()))
    assert row["seed_slot1_weight_norm"] == pytest.approx(weights, rel=1e-6)
    assert row["seed_slot1_param_count"] == 64 * 64 * 9 + 64
    assert row["available_slots"] == 0


# ---- NaN and Inf ---------------------------------------------------------------------------------

def test_nan_and_inf_in_losses_and_gradients_are_counted_not_fatal():
    torch.manual_seed(4)
    model = TinyNet()
    cfg = load_config("research")
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES)
    data = batches(4, seed=4)
    nonfinite = []

    def batch(x, y, scale=None, shift=None, poke=False):
        model.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if scale is not None:
            loss = loss * scale
        if shift is not None:
            loss = loss + shift
        loss.backward()
        if poke:
            model.fc2.weight.grad[0, 0] = math.inf
            model.fc1.bias.grad[1] = math.nan
        nonfinite.append(sum(int((~torch.isfinite(p.grad)).sum()) for p in model.parameters()))
        tracker.train_batch(loss, logits, y)

    model.train()
    batch(*data[0])
    batch(*data[1], scale=math.nan)  # NaN loss: every gradient element is NaN
    batch(*data[2], shift=math.inf)  # Inf loss, finite gradients
    batch(*data[3], poke=True)  # finite loss, two non-finite gradient elements
    model.eval()
    with torch.no_grad(), tracker.validating():
        x, y = data[0]
        logits = model(x)
        logits[0, 0] = math.nan
        logits[1, 1] = math.inf
        tracker.val_batch(logits, y, inputs=x)
    row = tracker.end_step()
    assert row["loss_nonfinite_batches"] == 2
    assert nonfinite[0] == 0 and nonfinite[2] == 0 and nonfinite[3] == 2 and nonfinite[1] > 1000
    assert row["grad_nonfinite_count"] == sum(nonfinite)
    assert math.isnan(row["train_loss"])
    assert math.isnan(row["grad_norm_fc1"]) and math.isnan(row["grad_std_conv"])
    assert row["grad_health"] == 0.0
    assert math.isnan(row["val_loss"])
    assert all(row[f"grad_p{q}_fc1"] is not None for q in cfg.gradients.percentiles)

    model.train()  # the next step starts clean
    for x, y in batches(3, seed=5):
        batch(x, y)
    validate(model, tracker, batches(1, seed=6))
    row = tracker.end_step()
    assert row["loss_nonfinite_batches"] == 0 and row["grad_nonfinite_count"] == 0
    # this step's own measurements are finite; features that look back at the NaN step show it
    history = {"loss_delta"} | {f"val_loss_lag{k}" for k in range(1, cfg.history_length)}
    numeric = {k: v for k, v in row.items() if isinstance(v, float) and k not in history}
    assert numeric and all(math.isfinite(v) for v in numeric.values()), numeric
    assert math.isnan(row["loss_delta"]) and math.isnan(row["val_loss_lag1"])


# ---- determinism and non-interference --------------------------------------------------------------

def run_rows(tracker_seed: int) -> list[dict[str, object]]:
    torch.manual_seed(5)
    model = TinyNet()
    cfg = load_config("research", overrides=["gradients.sample_size=1024"])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES, seed=tracker_seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = []
    for epoch in range(2):
        train(model, tracker, batches(20, seed=10 + epoch), opt)  # > 16 batches: the reservoir is exercised
        validate(model, tracker, batches(2, seed=20 + epoch))
        rows.append(tracker.end_step())
    tracker.close()
    return rows


def test_same_seed_gives_the_same_rows_and_the_seed_matters():
    a, b, c = run_rows(7), run_rows(7), run_rows(8)
    assert a == b
    for prefix in ("grad_p", "sharpness_"):  # the gradient sample and the perturbations both follow it
        assert any(a[i][k] != c[i][k] for i in range(2) for k in a[0] if k.startswith(prefix)), prefix
    unsampled = [k for k in a[0] if not (k.startswith(("grad_p", "grad_hist_", "sharpness")))]
    assert all(a[i][k] == c[i][k] for i in range(2) for k in unsampled)


def tracked_training(profile: str) -> tuple[list[dict[str, object]], dict[str, bytes], bytes]:
    """Dropout, shuffling and noise all draw from the global RNG: any draw by the tracker shows."""
    torch.manual_seed(6)
    model = SlotNet(dropout=0.3)
    tracker = DiagnosticTracker(model, load_config(profile), num_classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = batches(6, seed=6)
    rows = []
    for epoch in range(3):
        if epoch == 1:
            model.slot1.seed = nn.Conv2d(64, 64, 3, padding=1)
            opt.add_param_group({"params": list(model.slot1.seed.parameters())})
        order = torch.randperm(len(data)).tolist()
        noisy = [(data[i][0] + 0.1 * torch.randn_like(data[i][0]), data[i][1]) for i in order]
        train(model, tracker, noisy, opt)
        validate(model, tracker, batches(2, seed=30 + epoch))
        rows.append(tracker.end_step())
    tracker.close()
    state = {k: bits(v) for k, v in model.state_dict().items()}
    return rows, state, bits(torch.get_rng_state())


def test_tracking_does_not_disturb_training_minimal_vs_richer_profiles():
    ref_rows, ref_state, ref_rng = tracked_training("minimal")
    for profile in ("diagnostic", "research"):
        rows, state, rng = tracked_training(profile)
        assert state == ref_state and rng == ref_rng, profile
        for ref, row in zip(ref_rows, rows, strict=True):
            assert list(row)[:BASE_FEATURES] == list(ref)[:BASE_FEATURES]
            assert [row[k] for k in list(ref)[:BASE_FEATURES]] == [ref[k] for k in list(ref)[:BASE_FEATURES]]


# ---- host synchronisation ------------------------------------------------------------------------

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
    rows = sync_free_run(model, "cuda", lambda step: strict if step else _nothing, steps=3)
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
