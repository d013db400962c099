"""The sampled gradient path against float64 references, within the bounds its features state.

With `gradients.sample_size = 1024` a batch samples 64 elements per layer, so TinyNet's conv (112
elements), fc1 (2,600) and fc2 (205) are sampled and bn (8) is read whole. Norms stay exact (one
multi-tensor sum of squares); shares of |g| under / over a threshold must lie within the DKW bound
of the pool; the std within its Bernstein bound, per batch; and the per-batch work must never hold
all gradients in one tensor when the model is larger than a pack.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.dispatch import OpMonitor
from support.models import DeepMLP, TinyNet
from torch import nn

from telemetry import DiagnosticTracker, load_config
from telemetry.probes import gradient_sample
from telemetry.probes.gradient_reservoir import percentile_error_bound
from telemetry.probes.gradient_sample import mean_error_bound

CLASSES = 5
LAYERS = ("conv", "bn", "fc1", "fc2")
PER_BATCH = 64


def layer_grads(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p.grad.detach().double().numpy().ravel()
                                  for p in getattr(model, name).parameters(recurse=False)])
            for name in LAYERS}


def run_step(model, tracker, n_batches: int, seed: int, nan_at: int | None = None) -> list[dict[str, np.ndarray]]:
    """One step of n_batches on fixed weights; batch b's loss is scaled so batches differ widely."""
    g = torch.Generator().manual_seed(seed)
    scales = np.logspace(0, 3, n_batches)[np.random.default_rng(seed).permutation(n_batches)]
    captured = []
    for b in range(n_batches):
        x, y = torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, CLASSES, (8,), generator=g)
        model.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        (loss * float(scales[b])).backward()
        if nan_at is not None and b == nan_at:
            model.fc1.weight.grad[0, :3] = math.nan
        captured.append(layer_grads(model))
        tracker.train_batch(loss, logits, y)
    return captured


def tracked(seed: int, *extra: str) -> tuple[nn.Module, DiagnosticTracker]:
    torch.manual_seed(seed)
    model = TinyNet(CLASSES)
    with torch.no_grad():
        model.fc2.weight.mul_(torch.logspace(-2, 2, 40))  # columns four orders of magnitude apart
    cfg = load_config("research", overrides=["gradients.sample_size=1024", "gradients.vanishing_threshold=1e-4",
                                              "gradients.exploding_threshold=0.05", *extra])
    return model, DiagnosticTracker(model, cfg, num_classes=CLASSES, rng_seed=seed)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_batches", [12, 40])
def test_sampled_shares_and_std_lie_within_their_stated_bounds(n_batches, seed):
    model, tracker = tracked(seed)
    captured = run_step(model, tracker, n_batches, seed)
    row = tracker.end_step()
    e = percentile_error_bound(min(n_batches, 16) * PER_BATCH) / 100
    informative = 0
    for name in LAYERS:
        gs = [c[name] for c in captured]
        pooled = np.abs(np.concatenate(gs))
        norms = [math.sqrt(float(np.sum(g * g))) for g in gs]
        assert row[f"grad_norm_{name}"] == pytest.approx(np.mean(norms), rel=1e-9)
        assert row[f"grad_norm_max_{name}"] == pytest.approx(max(norms), rel=1e-9)
        for key, true in (("vanishing", np.mean(pooled < 1e-4)), ("exploding", np.mean(pooled > 0.05))):
            got = row[f"grad_{key}_frac_{name}"]
            bound = 1e-9 if gs[0].size <= PER_BATCH and n_batches <= 16 else e
            assert abs(got - true) <= bound, (name, key, got, true, bound)
            informative += 0.02 < true < 0.98
        lo, hi = [], []
        for g in gs:
            mean, ms, top = float(g.mean()), float(np.mean(g * g)), float(np.abs(g).max())
            h = 0.0 if g.size <= PER_BATCH else mean_error_bound(ms, top, PER_BATCH)
            var = ms - mean * mean
            lo.append(math.sqrt(max(var - h * (2 * abs(mean) + h), 0.0)))
            hi.append(math.sqrt(var + h * (2 * abs(mean) + h)))
        assert np.mean(lo) * (1 - 1e-6) <= row[f"grad_std_{name}"] <= np.mean(hi) * (1 + 1e-6), name
    assert row["grad_nonfinite_count"] == 0
    assert informative >= 3  # the thresholds cut inside the distributions, not at their ends


def test_the_exact_path_ignores_the_sample_size():
    model, tracker = tracked(5, "gradients.exact=true")
    captured = run_step(model, tracker, 20, seed=5)
    row = tracker.end_step()
    for name in LAYERS:
        gs = [c[name] for c in captured]
        assert row[f"grad_vanishing_frac_{name}"] == pytest.approx(np.mean([np.mean(np.abs(g) < 1e-4) for g in gs]),
                                                                   rel=1e-6, abs=1e-9)
        assert row[f"grad_std_{name}"] == pytest.approx(np.mean([np.std(g) for g in gs]), rel=1e-4)


@pytest.mark.parametrize("exact", ["false", "true"])
def test_non_finite_gradients_are_counted_and_mark_the_layer(exact):
    model, tracker = tracked(6, f"gradients.exact={exact}")
    run_step(model, tracker, 6, seed=6, nan_at=2)
    row = tracker.end_step()
    if exact == "true":
        assert row["grad_nonfinite_count"] == 3
    else:  # stated: at least one, an estimate from the pool's non-finite share
        assert 1 <= row["grad_nonfinite_count"] <= 6 * 2600
    assert math.isnan(row["grad_norm_fc1"]) and row["grad_health"] <= 0.75  # fc1 counts as unhealthy
    clean = tracker
    run_step(model, clean, 3, seed=7)
    assert clean.end_step()["grad_nonfinite_count"] == 0  # per step: the next one is clean again


class LargestOutput(OpMonitor):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_per_batch_tensor_holds_every_gradient_when_the_model_exceeds_a_pack(monkeypatch):
    """Packs of at most 2,000 elements on a 6-layer MLP of ~7,000: the per-batch copy is bounded by
    the pack, not the model, and the statistics are still right across packs."""
    monkeypatch.setattr(gradient_sample, "PACK_ELEMENTS", 2000)
    torch.manual_seed(3)
    model = DeepMLP(6, width=40)
    total = sum(p.numel() for p in model.parameters())
    tracker = DiagnosticTracker(model, load_config("diagnostic", overrides=["gradients.sample_size=1024"]),
                                num_classes=10)
    g = torch.Generator().manual_seed(0)
    largest, norms = 0, {f"fc{i}": [] for i in range(6)}
    for _ in range(5):
        x, y = torch.randn(16, 48, generator=g), torch.randint(0, 10, (16,), generator=g)
        model.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        for name in norms:
            norms[name].append(math.sqrt(sum(float((p.grad.double() ** 2).sum())
                                             for p in getattr(model, name).parameters())))
        monitor = LargestOutput()
        with monitor:
            tracker.train_batch(loss, logits, y)
        largest = max(largest, monitor.largest)
    row = tracker.end_step()
    assert total > 3 * 2000 and largest <= 2000 + 1
    for name, values in norms.items():
        assert row[f"grad_norm_{name}"] == pytest.approx(np.mean(values), rel=1e-9)
    assert row["grad_p50_fc5"] is not None
