"""How the tracker behaves around a training run: it removes its hooks, follows seeds added mid-run,
survives NaN/Inf, is deterministic, and leaves training undisturbed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.models import ReferenceCNN, TinyNet
from support.training import CLASSES, SlotNet, batches, bits, train, validate
from torch import nn

from telemetry.config import load_config
from telemetry.tracker import DiagnosticTracker

BASE_FEATURES = 27


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
    model = ReferenceCNN(width=0.25, num_classes=CLASSES)
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
    model = ReferenceCNN(num_classes=CLASSES)
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

def run_rows(tracker_seed: int, *extra: str) -> list[dict[str, object]]:
    torch.manual_seed(5)
    model = TinyNet()
    cfg = load_config("research", overrides=["gradients.sample_size=1024", *extra])
    tracker = DiagnosticTracker(model, cfg, num_classes=CLASSES, rng_seed=tracker_seed)
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
    # the default path also takes the std's mean and the shares (health follows) from the sample
    sampled = ("grad_p", "grad_hist_", "sharpness", "grad_std_", "grad_vanishing_", "grad_exploding_", "grad_health")
    assert any(a[i][k] != c[i][k] for i in range(2) for k in a[0] if k.startswith("grad_std_"))
    unsampled = [k for k in a[0] if not k.startswith(sampled)]
    assert all(a[i][k] == c[i][k] for i in range(2) for k in unsampled)
    exact_a, exact_c = run_rows(7, "gradients.exact=true"), run_rows(8, "gradients.exact=true")
    unsampled = [k for k in exact_a[0] if not (k.startswith(("grad_p", "grad_hist_", "sharpness")))]
    assert all(exact_a[i][k] == exact_c[i][k] for i in range(2) for k in unsampled)


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
